"""Our figures in their own style, whatever ran before in the process.

nnU-Net's progress plot calls ``seaborn.set(font_scale=2.5)``, which changes matplotlib's global settings for the
rest of the training process; figures drawn after it (the sampling progress of PNSS/HESS, hard-sample pre-training's
classification) got oversized fonts with overlapping and cut-off labels. :func:`own_style` draws a figure inside
matplotlib's default style (a context: the caller's settings come back afterwards).
"""
from __future__ import annotations

import functools


def own_style(draw):
    """Decorator: run ``draw`` with the Agg backend in matplotlib's default style."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib
        matplotlib.use("agg")
        import matplotlib.pyplot as plt
        with plt.style.context("default"):
            return draw(*args, **kwargs)
    return wrapper
