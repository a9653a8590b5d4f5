"""plot_reliability draws the bins of metrics.expected_calibration_error; plot_episode still imports from its old home."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pyro_meta import metrics  # noqa: E402
from pyro_meta.plot_classification import _ece_of, plot_episode, plot_reliability  # noqa: E402


def _probs(seed, over_confident):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(4, 50, 5, generator=g)
    labels = torch.distributions.Categorical(logits=logits).sample()
    probs = torch.softmax(logits * (3.0 if over_confident else 1.0), -1)
    return probs, labels, torch.ones(4, 50, dtype=torch.bool)


def test_bars_are_the_bins_accuracy_and_the_title_their_ece():
    probs, labels, mask = _probs(0, over_confident=True)
    ece, bins = metrics.expected_calibration_error(probs, labels, mask, bins=15)
    assert abs(_ece_of(bins) - ece) < 1e-9  # the ECE is recomputable from the bins
    fig = plot_reliability(
        {"sharp": bins, "pair": metrics.expected_calibration_error(*_probs(1, False), bins=15)}, title="t"
    )
    top = fig.axes[0]
    assert top.get_title() == f"sharp: ECE {ece:.3f}"
    heights = [p.get_height() for p in top.patches[: int((bins.count > 0).sum())]]
    np.testing.assert_allclose(heights, bins.accuracy[bins.count > 0].numpy(), atol=1e-12)
    assert len(fig.axes) == 4  # two panels, each with its count histogram
    plt.close(fig)


def test_predictive_input_and_bad_input(generator):
    import pyro_meta
    from tests.inference.test_class_probs import _batch, _Softmax

    batch = _batch(3, generator, ragged=False)
    pred = pyro_meta.infer(_Softmax(), batch, method="amortized", num_samples=4, seed=0).predict()
    ece, _ = metrics.expected_calibration_error(pred.class_probs, batch.target_y, batch.target_mask, bins=5)
    fig = plot_reliability(pred, bins=5)
    assert fig.axes[0].get_title() == f"ECE {ece:.3f}"
    plt.close(fig)
    with pytest.raises(TypeError, match="ReliabilityBins"):
        plot_reliability(torch.rand(3))
    with pytest.raises(ValueError, match="empty"):
        plot_reliability({})


def test_plot_episode_keeps_its_import_path():
    import pyro_meta.plot_episode as old

    assert old.plot_episode is plot_episode
