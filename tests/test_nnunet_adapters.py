"""Pins every nnU-Net (and batchgenerators) internal that ``nnunetv2_ext/nnunet_adapters/`` relies on (issue 21,
item 1): when an nnU-Net upgrade renames or reshapes one of them, this file fails, naming it, instead of a trainer
failing somewhere in the middle of a run. Read from the installed nnU-Net's code and signatures; nothing trains."""
import inspect

import pytest


def _params(fn):
    return list(inspect.signature(fn).parameters)


def _source(fn):
    return inspect.getsource(fn)


# ---------------------------------------------------------------- predictor.py (whole-case prediction)
def test_predictor_methods_the_case_level_wrapper_replaces():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    # the wrapper may be installed already in this process: read the originals it keeps in __wrapped__
    window = inspect.unwrap(nnUNetPredictor.predict_sliding_window_return_logits)
    iterator = inspect.unwrap(nnUNetPredictor.predict_from_data_iterator)
    assert _params(window)[:2] == ["self", "input_image"]
    assert _params(iterator)[:2] == ["self", "data_iterator"]
    # what CaseContext.from_predictor reads from the predictor
    init = _source(nnUNetPredictor.__init__) + _source(nnUNetPredictor.manual_initialization)
    for attribute in ("tile_step_size", "use_gaussian", "use_mirroring", "device", "network", "plans_manager",
                      "configuration_manager", "allowed_mirroring_axes"):
        assert f"self.{attribute}" in init, attribute
    # the items of the data iterator carry the output file and the case's properties
    assert "'ofile'" in _source(iterator) or '"ofile"' in _source(iterator)
    assert "data_properties" in _source(iterator)


def test_validation_loads_cases_through_the_dataset_class_then_predicts_them():
    """``validation_dataset_declaring_cases`` relies on nnU-Net's validation creating ``self.dataset_class`` for the
    validation keys and predicting each loaded case with ``predict_sliding_window_return_logits``; properties are
    the 4th element of ``load_case``."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    validation = _source(nnUNetTrainer.perform_actual_validation)
    assert "self.dataset_class(" in validation
    assert ".load_case(" in validation and "predict_sliding_window_return_logits(" in validation
    assert "data, _, seg_prev, properties = dataset_val.load_case(" in validation.replace("\n", " ") or \
        "properties = dataset_val.load_case(" in validation
    assert _params(nnUNetBaseDataset.load_case)[:2] == ["self", "identifier"]


def test_sliding_window_helpers():
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
    assert _params(compute_steps_for_sliding_window)[:3] == ["image_size", "tile_size", "tile_step_size"]
    assert {"sigma_scale", "value_scaling_factor", "dtype", "device"} <= set(_params(compute_gaussian))
    assert compute_steps_for_sliding_window((5, 40), (5, 16), 0.5) == [[0], [0, 8, 16, 24]]


# ---------------------------------------------------------------- network.py
def test_network_wrappers_unwrap_as_nnunet_wraps_them():
    import torch
    from torch import nn
    from torch._dynamo import OptimizedModule

    from nnunetv2_ext.nnunet_adapters.network import unwrap_network
    net = nn.Linear(2, 2)
    compiled = torch.compile(net)
    assert isinstance(compiled, OptimizedModule) and unwrap_network(compiled) is net

    class FakeDDP(nn.Module):  # DistributedDataParallel keeps the module in .module
        def __init__(self, module):
            super().__init__()
            self.module = module
    assert unwrap_network(FakeDDP(compiled)) is net and unwrap_network(net) is net


# ---------------------------------------------------------------- dataloaders.py / augmenters.py
def test_trainer_hooks_build_dataloaders_calls():
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    for name in ("_get_deep_supervision_scales", "configure_rotation_dummyDA_mirroring_and_inital_patch_size",
                 "get_training_transforms", "get_validation_transforms", "get_tr_and_val_datasets"):
        assert callable(getattr(nnUNetTrainer, name, None)), name
    params = set(_params(nnUNetDataLoader.__init__))
    assert {"data", "batch_size", "patch_size", "final_patch_size", "label_manager", "oversample_foreground_percent",
            "sampling_probabilities", "pad_sides", "probabilistic_oversampling", "transforms"} <= params
    assert "get_dataloaders" in dir(nnUNetTrainer)


def test_batchgenerators_augmenter_attributes():
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    for cls in (MultiThreadedAugmenter, NonDetMultiThreadedAugmenter):
        init = _source(cls.__init__)
        for attribute in ("generator", "transform", "num_processes", "seeds"):
            assert f"self.{attribute}" in init, (cls.__name__, attribute)
        assert callable(getattr(cls, "_finish", None)), cls.__name__


@pytest.mark.parametrize("hook", ["set_thread_id"])
def test_workers_call_the_loader_hook_first(hook):
    """``one_thread_in_workers`` wraps the loader's ``set_thread_id``, which each batchgenerators worker calls first."""
    from batchgenerators.dataloading import multi_threaded_augmenter, nondet_multi_threaded_augmenter
    assert f".{hook}(" in inspect.getsource(multi_threaded_augmenter.producer)
    assert f".{hook}(" in inspect.getsource(nondet_multi_threaded_augmenter.producer)


# ---------------------------------------------------------------- checkpoint_sidecar.py
def test_checkpoints_are_saved_and_loaded_through_these_methods():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    assert _params(nnUNetTrainer.save_checkpoint)[:2] == ["self", "filename"]
    assert _params(nnUNetTrainer.load_checkpoint)[:2] == ["self", "filename_or_checkpoint"]
    assert "'current_epoch'" in _source(nnUNetTrainer.save_checkpoint)


def test_loss_reads_the_auxiliary_outputs_of_the_forward_it_follows():
    import torch
    from torch import nn

    from nnunetv2_ext.nnunet_adapters.auxiliary import LossWithAuxiliary

    class Net(nn.Module):
        auxiliary = None

        def forward(self, x):
            self.auxiliary = {"doubled": 2 * x}
            return x

    class Wrapped(nn.Module):  # as DDP holds it
        def __init__(self, module):
            super().__init__()
            self.module = module
    net = Net()
    seen = {}

    def loss(output, auxiliary, target, scale=1.0):
        seen.update(auxiliary=auxiliary, scale=scale)
        return (output - target).sum() * scale
    wrapped = Wrapped(net)
    fn = LossWithAuxiliary(loss, lambda: wrapped, lambda: {"scale": 3.0})
    with pytest.raises(RuntimeError, match="Net recorded no auxiliary outputs"):
        fn(torch.ones(1), torch.zeros(1))
    out = net(torch.ones(2))
    assert float(fn(out, torch.zeros(2))) == 6.0
    assert torch.equal(seen["auxiliary"]["doubled"], torch.full((2,), 2.0)) and seen["scale"] == 3.0


def test_trainer_sets_the_learning_rate_through_the_scheduler_at_each_epoch_start():
    """lr.py: nnU-Net builds its scheduler in configure_optimizers and calls step(current_epoch) every epoch (so a
    rate that is a function of the epoch resumes with --c); PolyLRScheduler keeps a step counter ``ctr``."""
    import inspect

    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    assert "self.lr_scheduler.step(self.current_epoch)" in inspect.getsource(nnUNetTrainer.on_train_epoch_start)
    assert "lr_scheduler" in inspect.getsource(nnUNetTrainer.configure_optimizers)
    scheduler = PolyLRScheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01), 0.01, 10)
    assert hasattr(scheduler, "ctr") and scheduler.optimizer.param_groups[0]["lr"] == 0.01


# ---------------------------------------------------------------- progress_plot.py
def test_on_epoch_end_plots_through_the_logger_before_counting_the_epoch():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    source = _source(nnUNetTrainer.on_epoch_end)
    plot = source.index("self.logger.plot_progress_png(self.output_folder)")
    assert plot < source.index("self.current_epoch += 1")
    assert "self.logger = " in _source(nnUNetTrainer.__init__)


def test_progress_plot_drawn_at_the_last_epoch_only():
    from types import SimpleNamespace

    from nnunetv2_ext.nnunet_adapters.progress_plot import plot_progress_at_last_epoch_only
    drawn = []
    trainer = SimpleNamespace(num_epochs=3, current_epoch=0,
                              logger=SimpleNamespace(plot_progress_png=lambda folder: drawn.append(folder)))
    plot_progress_at_last_epoch_only(trainer)
    for epoch in range(3):
        trainer.current_epoch = epoch
        trainer.logger.plot_progress_png(f"after epoch {epoch}")
    assert drawn == ["after epoch 2"]
