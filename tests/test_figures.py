"""Our figures keep their own style after nnU-Net's plotting changed matplotlib's global settings (it calls
seaborn.set(font_scale=2.5)); the caller's settings come back afterwards."""
import matplotlib

from nnunetv2_ext.figure_style import own_style


def test_own_style_ignores_and_restores_global_settings(tmp_path):
    import seaborn as sns
    sizes = {}

    @own_style
    def draw(path):
        import matplotlib.pyplot as plt
        sizes["inside"] = matplotlib.rcParams["font.size"], matplotlib.rcParams["axes.labelsize"]
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.set_ylabel("passes over D^r (paper epochs)")
        fig.savefig(path)
        plt.close(fig)

    sns.set(font_scale=2.5)  # what nnU-Net's progress plot does in every training process
    try:
        scaled = matplotlib.rcParams["font.size"]
        draw(tmp_path / "x.png")
        assert sizes["inside"] == (10.0, "medium")  # matplotlib's defaults, not the scaled fonts
        assert matplotlib.rcParams["font.size"] == scaled  # the caller's settings are back
    finally:
        matplotlib.rcdefaults()
    assert (tmp_path / "x.png").stat().st_size > 0


def test_sampling_progress_figure_after_nnunet_style(tmp_path):
    import seaborn as sns

    from nnunetv2_ext.sampling.report import plot_sampling_progress
    records = [{"epoch": e, "r": max(0.0, 1 - e / 5), "passes": e * 1.5, "hess_round": e % 2 == 1,
                "n_selected": 100 - 10 * e, "n_hard": 3, "n_outliers": 1, "outlier_threshold": 0.1,
                "slice_dsc_quantiles_10_25_50_75_90": [0.2, 0.4, 0.6, 0.8, 0.9], "mean_slice_dsc": 0.6}
               for e in range(10)]
    sns.set(font_scale=2.5)
    try:
        plot_sampling_progress(records, str(tmp_path))
    finally:
        matplotlib.rcdefaults()
    assert (tmp_path / "sampling_progress.png").stat().st_size > 0


def test_error_overlay_draws_false_positives_only_slice_in_blue():
    """A slice whose only error is extra voxels (no reference, no image) was drawn all black by nnU-Net's
    generate_overlay (its rescaling divides by the constant background's range): issue 20 item 7."""
    import numpy as np

    from nnunetv2_ext.evaluation.figures import OVERLAY_COLOURS, error_overlay
    reference = np.zeros((20, 20), bool)
    prediction = np.zeros((20, 20), bool)
    prediction[5:9, 5:9] = True
    rgb = error_overlay(reference, prediction)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    extra, rest = rgb[prediction], rgb[~prediction]
    assert (extra[:, 2] > 150).all() and (extra[:, 2] > extra[:, 0] + 80).all()  # blue where the extras are
    assert (rest == rest[0]).all() and 0 < rest[0, 0] < 80  # a dark, not black, background elsewhere
    # missed voxels red, agreement green, over an image; a constant image does not break the blend
    reference[5:7, 5:9] = True
    reference[12:14, 12:14] = True
    rgb = error_overlay(reference, prediction, image=np.full((20, 20), 40.0))
    assert np.argmax(rgb[5, 5]) == 1 and np.argmax(rgb[12, 12]) == 0 and np.argmax(rgb[8, 8]) == 2
    assert set(OVERLAY_COLOURS) == {"agreement", "missed", "extra"}
