# nnU-Net imports this file by its bare name while looking for a trainer (see nnunetv2_ext/_register_trainers.py).
# Re-exporting keeps one class object per trainer, whichever way it was found.
from nnunetv2_ext.trainers import *  # noqa: F401,F403
