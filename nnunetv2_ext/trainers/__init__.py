"""All trainers of nnunetv2_ext, found by name by nnUNetv2_train / nnUNetv2_predict after ``pip install``.

Each trainer module below is imported here; nnU-Net's name lookup goes through this module (see
``nnunetv2_ext/_register_trainers.py``). The small CPU variants (``...Tiny`` for the tests, ``...Demo`` for the demo
and the phantom evidence) are in :mod:`nnunetv2_ext.trainers.small_variants`.
"""
from nnunetv2_ext.trainers.loss_trainers import *  # noqa
from nnunetv2_ext.trainers.pnss_hess import *  # noqa: F401,F403
from nnunetv2_ext.trainers.pnss_table1 import *  # noqa: F401,F403
from nnunetv2_ext.trainers.hard_pretrain import *  # noqa
from nnunetv2_ext.trainers.cascade_trainers import *  # noqa
from nnunetv2_ext.trainers.coarse_to_fine import *  # noqa
from nnunetv2_ext.trainers.cps import *  # noqa
from nnunetv2_ext.trainers.slice_position import *  # noqa
from nnunetv2_ext.trainers.small_variants import *  # noqa
