"""All trainers of nnunetv2_ext, found by name by nnUNetv2_train / nnUNetv2_predict after ``pip install``."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerExtSmoke(nnUNetTrainer):
    pass
