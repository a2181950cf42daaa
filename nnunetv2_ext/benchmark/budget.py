"""Equal budget for any trainer, by one mechanism: the budget and the seed are part of the trainer's *name*.

``nnUNetTrainerHESS_BM30x50v5b8w8s2`` is ``nnUNetTrainerHESS`` trained for 30 epochs of 50 iterations (5 validation
iterations per epoch), batch 8, a network whose first stage has 8 features (the plans' later stages scaled by the same
factor) and seed 2. An optional ``k5`` at the end keeps the weights after every 5th epoch (``checkpoint_epoch_5.pth``
...), so that the benchmark can follow the predictions over training. The name is all nnU-Net needs: ``nnUNetv2_train`` and ``nnUNetv2_predict`` look the trainer up by
name through ``nnUNet_extTrainer``, our trainer-path module resolves names of this form with :func:`resolve` (a
module ``__getattr__``), and every run gets its own result folder (``<name>__nnUNetPlans__2d``), so seeds never
overwrite each other. No trainer code is written into files or strings; a user's trainer (found through their own
``nnUNet_extTrainer`` folder) is wrapped exactly like ours. ``0`` for batch or width keeps the plans' value.

What the seed controls (:class:`~nnunetv2_ext.nnunet_adapters.seeding.SeededRunMixin`): Python's, NumPy's and
torch's generators in the main process before the network is built (weight initialisation; + 1000 x DDP rank), and the augmentation workers: their seeds are fixed and
their batches consumed in a fixed order (:func:`nnunetv2_ext.nnunet_adapters.augmenters.seeded_augmenter`), so a run
with workers on is repeatable. Trainers that build their loaders with our ``build_dataloaders`` read the same
``seed`` attribute.
"""
from __future__ import annotations

import os
import re
from copy import deepcopy
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch

from nnunetv2_ext.nnunet_adapters.seeding import SeededRunMixin

SUFFIX = re.compile(r"^(?P<base>[A-Za-z_][A-Za-z0-9_]*?)_BM(?P<epochs>\d+)x(?P<iterations>\d+)v(?P<val_iterations>\d+)"
                    r"b(?P<batch>\d+)w(?P<width>\d+)s(?P<seed>\d+)(?:k(?P<keep_every>\d+))?$")


class BudgetError(ValueError):
    """A budget or trainer name that cannot be used (the message names the parameter)."""


@dataclass(frozen=True)
class Budget:
    """epochs x iterations (nnU-Net's ``num_epochs``, ``num_iterations_per_epoch``), validation iterations per epoch,
    batch size (0 = the plans'), first-stage features (0 = the plans'), seed (>= 1)."""
    epochs: int
    iterations: int
    val_iterations: int = 5
    batch: int = 0
    width: int = 0
    seed: int = 1
    keep_every: int = 0
    """Keep the weights after every ``keep_every``-th epoch (``checkpoint_epoch_<n>.pth``), so that predictions
    can be followed over training; 0 = nnU-Net's checkpoints only."""

    def __post_init__(self):
        for name in ("epochs", "iterations", "val_iterations", "seed"):
            if getattr(self, name) < 1:
                raise BudgetError(f"budget {name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch", "width", "keep_every"):
            if getattr(self, name) < 0:
                raise BudgetError(f"budget {name} must be >= 0 (0 = the plans' value), got {getattr(self, name)}")

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations

    def with_seed(self, seed: int) -> "Budget":
        return Budget(**dict(asdict(self), seed=seed))


def budget_name(base: str, budget: Budget) -> str:
    b = budget
    keep = f"k{b.keep_every}" if b.keep_every else ""
    return f"{base}_BM{b.epochs}x{b.iterations}v{b.val_iterations}b{b.batch}w{b.width}s{b.seed}{keep}"


def peer_trainer_name(trainer_cls: type, name: str) -> str:
    """The name under which trainer ``name`` runs beside ``trainer_cls`` in one benchmark: with the same budget and
    seed (``nnUNetTrainer`` -> ``nnUNetTrainer_BM30x50v5b8w8s1``) when ``trainer_cls`` is a budget trainer, else
    ``name`` unchanged. For trainers that read another trainer's results by name (hard pre-training's baseline)."""
    budget = getattr(trainer_cls, "budget", None)
    return budget_name(name, budget) if isinstance(budget, Budget) else name


def parse_name(name: str) -> Optional[tuple]:
    """(base trainer name, Budget) for a budget trainer name, else None."""
    m = SUFFIX.match(name)
    if m is None:
        return None
    return m.group("base"), Budget(**{k: int(v) for k, v in m.groupdict().items() if k != "base" and v is not None})


def kept_checkpoint(epochs_done: int) -> str:
    """File name of the weights kept after ``epochs_done`` epochs (``Budget.keep_every``)."""
    return f"checkpoint_epoch_{epochs_done}.pth"


def kept_epochs(budget: Budget) -> list:
    """Epoch counts after which weights are kept (the last epoch's are checkpoint_final.pth)."""
    return list(range(budget.keep_every, budget.epochs, budget.keep_every)) if budget.keep_every else []


def scaled_features(features_per_stage, width: int) -> list:
    """Features per stage scaled so that the first stage has ``width`` (at least 1 per stage); 0 = unchanged."""
    if not width:
        return list(features_per_stage)
    f0 = float(features_per_stage[0])
    return [max(1, int(round(f * width / f0))) for f in features_per_stage]


class BudgetMixin(SeededRunMixin):
    """The budget and the seed of :class:`Budget` on top of any nnU-Net trainer (mixin first)."""
    budget: Budget

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # explicit signature: nnU-Net records the init arguments by introspecting the most derived __init__
        super().__init__(plans, configuration, fold, dataset_json, device)
        b = self.budget
        self.num_epochs = b.epochs
        self.num_iterations_per_epoch = b.iterations
        self.num_val_iterations_per_epoch = b.val_iterations
        self.save_every = max(1, min(50, b.epochs // 10))  # a killed run loses at most a tenth of its epochs
        self.seed = b.seed
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and self.device.type == "cpu":
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

    def on_epoch_end(self):
        done = self.current_epoch + 1
        if self.budget.keep_every and done % self.budget.keep_every == 0 and done < self.num_epochs \
                and self.local_rank == 0:
            self.save_checkpoint(os.path.join(self.output_folder, kept_checkpoint(done)))
        super().on_epoch_end()

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if self.budget.batch:
            world = torch.distributed.get_world_size() if self.is_ddp else 1
            self.batch_size = max(1, -(-self.budget.batch // world))

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        if cls.budget.width:
            from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
            config = deepcopy(configuration_manager.configuration)
            kwargs = config["architecture"]["arch_kwargs"]
            if "features_per_stage" not in kwargs:
                raise BudgetError(f"{cls.__name__}: the plans' architecture has no features_per_stage, so the "
                                  f"budget's width {cls.budget.width} cannot be applied")
            kwargs["features_per_stage"] = scaled_features(kwargs["features_per_stage"], cls.budget.width)
            configuration_manager = ConfigurationManager(config)
        return super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                  num_output_channels, enable_deep_supervision)


_CACHE: Dict[str, type] = {}


def find_trainer_class(name: str):
    """nnU-Net's own lookup (nnunetv2's trainers, then the ``nnUNet_extTrainer`` folders); BudgetError if unknown."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    import contextlib
    import io
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints every module it inspects
            return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise BudgetError(f"unknown trainer {name!r}: not in nnU-Net, nnunetv2_ext or the folders of "
                          f"nnUNet_extTrainer ({os.environ.get('nnUNet_extTrainer', '')})") from None


def make_budget_trainer(base: type, budget: Budget) -> type:
    """The budget trainer class for ``base`` (one class object per name; picklable by name)."""
    name = budget_name(base.__name__, budget)
    if name not in _CACHE:
        _CACHE[name] = type(name, (BudgetMixin, base), {
            "budget": budget, "seed": budget.seed, "__module__": __name__, "__qualname__": name,
            "__doc__": f"{base.__name__} at a fixed budget: {budget} (nnunetv2_ext.benchmark.budget)."})
    return _CACHE[name]


def resolve(name: str) -> type:
    """The budget trainer class of a budget trainer name; AttributeError for any other name (so that nnU-Net's
    ``hasattr`` lookup moves on)."""
    if name in _CACHE:
        return _CACHE[name]
    parsed = parse_name(name)
    if parsed is None:
        raise AttributeError(name)
    base, budget = parsed
    return make_budget_trainer(find_trainer_class(base), budget)


def __getattr__(name: str):  # pickling a budget trainer class looks it up here by name
    if name.startswith("__"):
        raise AttributeError(name)
    return resolve(name)
