"""Draw nnU-Net's ``progress.png`` only after the last epoch: :func:`plot_progress_at_last_epoch_only`.

nnU-Net's ``on_epoch_end`` redraws ``progress.png`` with matplotlib after every epoch (about 0.9 s on a CPU core).
For a real run (250 iterations per epoch) that is noise; for the tiny CPU test trainers, whose epochs take about a
second, it is close to half of the training. Used by :class:`nnunetv2_ext.trainers.tiny.TinyTrainingMixin` only;
the plot is still written, once, at the end of training (also after ``--c``). ``tests/test_nnunet_adapters.py``
pins what it relies on: ``on_epoch_end`` calls ``self.logger.plot_progress_png(output_folder)`` before it counts
``current_epoch`` on.
"""
from __future__ import annotations


def plot_progress_at_last_epoch_only(trainer) -> None:
    """Wrap ``trainer.logger.plot_progress_png`` so that it draws only during the trainer's last epoch."""
    logger = trainer.logger
    plot = logger.plot_progress_png

    def plot_at_last_epoch(output_folder):
        if trainer.current_epoch >= trainer.num_epochs - 1:
            plot(output_folder)

    logger.plot_progress_png = plot_at_last_epoch
