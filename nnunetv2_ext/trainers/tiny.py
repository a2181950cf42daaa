"""Tiny training variants for CPU tests and the demo.

:class:`TinyTrainingMixin` shrinks any trainer: fewer epochs and iterations, a small batch and a network with at most
``tiny_max_features`` channels per stage. The network change lives in ``build_network_architecture`` (a classmethod
here), because nnU-Net's predictor rebuilds the network through the trainer class at inference time.

Combine with any trainer, mixin first::

    class nnUNetTrainerPNSSHESSTiny(TinyTrainingMixin, nnUNetTrainerPNSSHESS):
        pass
"""
from __future__ import annotations

import os
from copy import deepcopy

import torch

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_ext.nnunet_adapters.progress_plot import plot_progress_at_last_epoch_only


def shrink_features(features_per_stage, divisor: int, max_features: int) -> list:
    """Channels per stage divided by ``divisor`` and capped at ``max_features`` (at least 4)."""
    return [max(4, min(int(f) // divisor, max_features)) for f in features_per_stage]


class TinyTrainingMixin:
    tiny_num_epochs = 4
    tiny_iterations_per_epoch = 10
    tiny_val_iterations_per_epoch = 2
    tiny_batch_size = 4
    tiny_feature_divisor = 2
    tiny_max_features = 64
    #: progress plots (nnU-Net's progress.png, PNSS/HESS's sampling_progress.png) drawn after the last epoch only:
    #: matplotlib takes about 0.9 s per plot, as long as a tiny epoch (nnunet_adapters.progress_plot)
    plot_progress_every_epoch = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # explicit signature: nnU-Net records the init arguments by introspecting the most derived __init__
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.tiny_num_epochs
        self.num_iterations_per_epoch = self.tiny_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.tiny_val_iterations_per_epoch
        self.save_every = 1  # so that --c has a checkpoint_latest.pth to resume from after every epoch
        if not self.plot_progress_every_epoch:
            plot_progress_at_last_epoch_only(self)
        # nnUNetv2_train -device cpu sets torch.set_num_threads(cpu_count); on a shared 2-core machine with busy
        # augmentation workers that made validation ~8x slower (107 s vs 13 s measured), so OMP_NUM_THREADS wins
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and self.device.type == "cpu":
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, self.tiny_batch_size)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True):
        config = deepcopy(configuration_manager.configuration)
        kwargs = config["architecture"]["arch_kwargs"]
        kwargs["features_per_stage"] = shrink_features(kwargs["features_per_stage"], cls.tiny_feature_divisor,
                                                       cls.tiny_max_features)
        return super().build_network_architecture(plans_manager, ConfigurationManager(config), num_input_channels,
                                                  num_output_channels, enable_deep_supervision)
