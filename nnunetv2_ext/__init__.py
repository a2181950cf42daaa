"""nnunetv2_ext: extensions of nnU-Net v2 for small organs and tumours in CT."""
__version__ = "0.1.0"
