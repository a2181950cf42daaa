"""Cross pseudo supervision with unlabelled CT (issue 10, part 4; Chen et al. CVPR 2021 as used by Pham et al.,
FLARE22): two networks of different architecture, each trained on the labelled patches and on the other's argmax of
unlabelled patches.

    nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres
    nnUNetv2_train ID 3d_fullres FOLD -tr nnUNetTrainerCPS            # unlabelled cases: imagesUnlabeled/ (raw)
    nnUNetv2_predict -i IN -o OUT -d ID -c 3d_fullres -f FOLD -tr nnUNetTrainerCPS   # mean of both softmaxes

The trainer-free parts live in :mod:`nnunetv2_ext.semisupervised` (loss and ramp-up in ``cps``, networks in
``cps_networks``, loader in ``cps_loader``, unlabelled cases in ``unlabelled``). See
``trainers_docs/nnUNetTrainerCPS.md``.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch
from torch import autocast
from torch import distributed as dist

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_ext.nnunet_adapters.network import unwrap_network
from nnunetv2_ext.semisupervised.cps import (CPSNetworkPair, CrossPseudoSupervisionLoss, SigmoidRampUp, agreement,
                                             full_resolution, split_batch)
from nnunetv2_ext.semisupervised.cps_loader import nnUNetDataLoaderCPS
from nnunetv2_ext.semisupervised.cps_networks import RESENC_BLOCKS_PER_STAGE, build_pair_members
from nnunetv2_ext.semisupervised.unlabelled import HOW_TO_DECLARE, UnlabelledCasesError
from nnunetv2_ext.semisupervised.unlabelled import dataset_class as unlabelled_dataset_class
from nnunetv2_ext.semisupervised.unlabelled import (find_unlabelled_cases, preprocess_unlabelled, preprocessed_cases,
                                                    unlabelled_folder)
from nnunetv2_ext.nnunet_adapters.dataloaders import build_dataloaders

__all__ = ["nnUNetTrainerCPS"]


class nnUNetTrainerCPS(nnUNetTrainer):
    """Parameters (class attributes; derive a class to change them):

    - ``cps_weight``: lambda(epoch) of Eq. 3, :class:`SigmoidRampUp` (maximum 1, reached after 20 % of training).
    - ``unlabelled_batch_ratio``: unlabelled patches per labelled patch in a batch (1: as many, as in Chen et al.).
    - ``partner_resenc_blocks``: encoder blocks per stage when network B is the residual-encoder U-Net.
    - ``unlabelled_preprocessing_processes``: processes for preprocessing the unlabelled cases at the first start.
    """
    cps_weight = SigmoidRampUp(maximum=1.0, ramp_fraction=0.2)
    unlabelled_batch_ratio = 1.0
    partner_resenc_blocks = RESENC_BLOCKS_PER_STAGE
    unlabelled_preprocessing_processes = None  # None: nnU-Net's default_num_processes

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # checked before nnU-Net's __init__ creates the output folder and log: bad input writes nothing
        self.unlabelled_cases, self.unlabelled_folder = self.check_dataset(plans, configuration, dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cps_loss = None
        self._epoch_stats: List[dict] = []

    # ---------------------------------------------------------------- checks, unlabelled cases
    @classmethod
    def check_dataset(cls, plans: dict, configuration: str, dataset_json: dict):
        """(declared unlabelled cases {id: image files}, folder of their preprocessed copies); raises ValueError on a
        region-based dataset, bad parameters, or a dataset without unlabelled cases (raw declaration, unlabelled.py,
        or already preprocessed copies, for a machine without nnUNet_raw)."""
        name = cls.__name__
        plans_manager = PlansManager({k: v for k, v in plans.items() if k != "continue_training"})
        if plans_manager.get_label_manager(dataset_json).has_regions:
            raise ValueError(f"{name}: the dataset is region-based (sigmoid outputs); cross pseudo supervision uses "
                             f"argmax pseudo-labels of mutually exclusive labels")
        if not callable(cls.cps_weight):
            raise ValueError(f"{name}: cps_weight must be a schedule w(epoch, num_epochs)")
        cls.cps_weight(0, 1)  # validates
        if not cls.unlabelled_batch_ratio > 0:
            raise ValueError(f"{name}: unlabelled_batch_ratio must be > 0, got {cls.unlabelled_batch_ratio}")
        dataset_name = plans_manager.dataset_name
        preprocessed = os.environ.get("nnUNet_preprocessed")
        if not preprocessed:
            raise ValueError(f"{name}: nnUNet_preprocessed is not set")
        data_folder = os.path.join(preprocessed, dataset_name,
                                   plans_manager.get_configuration(configuration).data_identifier)
        labelled = infer_dataset_class(data_folder).get_identifiers(data_folder) if os.path.isdir(data_folder) else []
        raw = os.environ.get("nnUNet_raw")
        raw_folder = os.path.join(raw, dataset_name) if raw else None
        cases = {}
        if raw_folder and os.path.isdir(raw_folder):
            try:
                cases = find_unlabelled_cases(raw_folder, dataset_json, labelled)
            except UnlabelledCasesError as e:
                raise ValueError(f"{name}: {e}") from e
        folder = unlabelled_folder(data_folder)
        if not cases and not preprocessed_cases(folder):
            raise ValueError(f"{name}: dataset {dataset_name} has no unlabelled cases; {HOW_TO_DECLARE}")
        return cases, folder

    def _prepare_unlabelled(self) -> List[str]:
        if self.local_rank == 0:
            from nnunetv2.configuration import default_num_processes
            n = self.unlabelled_preprocessing_processes or default_num_processes
            cases = preprocess_unlabelled(self.unlabelled_cases, self.unlabelled_folder, self.plans_manager.plans,
                                          self.configuration_name, self.dataset_json, n,
                                          log=lambda *a: self.print_to_log_file(*a))
        if self.is_ddp:
            dist.barrier()
        cases = preprocessed_cases(self.unlabelled_folder)
        if not cases:
            raise ValueError(f"{type(self).__name__}: no preprocessed unlabelled case in {self.unlabelled_folder}")
        return cases

    def on_train_start(self):
        self.unlabelled_identifiers = self._prepare_unlabelled()
        super().on_train_start()
        self.print_to_log_file(f"CPS: {len(self.unlabelled_identifiers)} unlabelled cases "
                               f"({self.unlabelled_folder}), {self.unlabelled_batch_size} unlabelled patches per "
                               f"batch of {self.batch_size} labelled; lambda = {self.cps_weight}; networks "
                               f"{type(self.cps_pair.net_a).__name__} + {type(self.cps_pair.net_b).__name__}")

    @property
    def unlabelled_batch_size(self) -> int:
        return max(1, int(round(self.batch_size * self.unlabelled_batch_ratio)))

    # ---------------------------------------------------------------- networks
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> CPSNetworkPair:
        net_a, net_b = build_pair_members(configuration_manager, num_input_channels, num_output_channels,
                                          enable_deep_supervision, cls.partner_resenc_blocks)
        return CPSNetworkPair(net_a, net_b)

    @property
    def cps_pair(self) -> CPSNetworkPair:
        return unwrap_network(self.network)

    def set_deep_supervision_enabled(self, enabled: bool):
        self.cps_pair.set_deep_supervision(enabled)

    def _build_loss(self):
        dice = MemoryEfficientSoftDiceLoss(apply_nonlin=lambda x: torch.softmax(x, 1),
                                           batch_dice=self.configuration_manager.batch_dice, do_bg=False,
                                           smooth=1e-5, ddp=self.is_ddp)
        self.cps_loss = CrossPseudoSupervisionLoss(dice)
        return super()._build_loss()  # nnU-Net's Dice + CE with deep supervision, applied to each network

    # ---------------------------------------------------------------- data
    def get_dataloaders(self):
        """nnU-Net's loaders (same transforms and augmenters, shared glue), the training loader with unlabelled
        patches (:class:`nnUNetDataLoaderCPS`)."""
        unlabelled = unlabelled_dataset_class()(self.unlabelled_folder, self.unlabelled_identifiers)

        def train_loader(dataset_tr, initial_patch_size, patch_size, transforms, **common):
            return nnUNetDataLoaderCPS(dataset_tr, self.batch_size, initial_patch_size, patch_size, self.label_manager,
                                       unlabelled, self.unlabelled_batch_size, transforms=transforms, **common)

        mt_train, mt_val = build_dataloaders(self, train_loader)
        _ = next(mt_train)
        _ = next(mt_val)
        return mt_train, mt_val

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.current_cps_weight = self.cps_weight(self.current_epoch, self.num_epochs)
        self.print_to_log_file(f"CPS weight lambda = {self.current_cps_weight:.4f}")
        self._epoch_stats = []

    def train_step(self, batch: dict) -> dict:
        data, target, unlabelled = batch["data"], batch["target"], batch["unlabelled_data"]
        num_labelled = data.shape[0]
        x = torch.cat([data, unlabelled]).to(self.device, non_blocking=True)
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        weight = getattr(self, "current_cps_weight", self.cps_weight(self.current_epoch, self.num_epochs))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            out_a, out_b = self.network(x, return_both=True)
            lab_a, unl_a = split_batch(out_a, num_labelled)
            lab_b, unl_b = split_batch(out_b, num_labelled)
            sup_a = self.loss(lab_a, target)  # Eq. 1 with nnU-Net's Dice + CE, each network
            sup_b = self.loss(lab_b, target)
            cps = self.cps_loss(full_resolution(unl_a), full_resolution(unl_b))  # Eq. 2, Dice
            loss = sup_a + sup_b + weight * cps  # Eq. 3
        pair = self.cps_pair
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            for net in (pair.net_a, pair.net_b):  # nnU-Net's clipping, per network
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            for net in (pair.net_a, pair.net_b):
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            self.optimizer.step()
        self._epoch_stats.append({"sup_a": float(sup_a.detach()), "sup_b": float(sup_b.detach()),
                                  "cps": float(cps.detach()),
                                  "agreement": agreement(full_resolution(unl_a), full_resolution(unl_b)),
                                  "unlabelled_keys": list(batch.get("unlabelled_keys", [])),
                                  "worker_pid": batch.get("worker_pid")})
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        stats = self._epoch_stats
        if not stats:
            return
        keys = [k for s in stats for k in s["unlabelled_keys"]]
        unknown = sorted(set(keys) - set(self.unlabelled_identifiers))
        if unknown:  # cannot happen unless the loader is broken: say so loudly
            raise RuntimeError(f"CPS: batches held unlabelled patches of unknown cases {unknown[:5]}")
        pids = sorted({s["worker_pid"] for s in stats if s["worker_pid"] is not None})
        self.print_to_log_file(
            "CPS: L_sup(A) {:.4f}, L_sup(B) {:.4f}, L_cps {:.4f} (x lambda {:.4f}), A/B agreement on unlabelled "
            "patches {:.3f}; {} unlabelled patches from {} of {} unlabelled cases, built by worker pids {}".format(
                np.mean([s["sup_a"] for s in stats]), np.mean([s["sup_b"] for s in stats]),
                np.mean([s["cps"] for s in stats]), self.current_cps_weight,
                np.mean([s["agreement"] for s in stats]), len(keys), len(set(keys)),
                len(self.unlabelled_identifiers), pids))


# the small CPU variants moved to nnunetv2_ext.trainers.small_variants (issue 21); old imports keep working
from nnunetv2_ext._moved import moved  # noqa: E402

__getattr__ = moved(__name__, ["nnunetv2_ext.trainers.small_variants"], names=['nnUNetTrainerCPSTiny'])
