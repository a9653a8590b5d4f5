"""plot_episode draws support images by class and query images, with probability bars when given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pyro_meta.data import Episodes, LinearTasks  # noqa: E402
from pyro_meta.plot_episode import plot_episode  # noqa: E402


@pytest.fixture
def episode():
    images = torch.rand(4 * 6, 6, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat_interleave(6)
    eps = Episodes(images, labels, way=3, shots=2, queries=2, rotations=True, class_names=["a", "b", "c", "d"])
    return eps, eps.sample(2, generator=torch.Generator().manual_seed(1))


def _images_drawn(fig):
    return [im.get_array() for ax in fig.axes for im in ax.get_images()]


def test_draws_support_and_queries(episode):
    eps, b = episode
    fig = plot_episode(b, task=1, class_names=eps.class_names)
    drawn = _images_drawn(fig)
    assert len(drawn) == 6 + 6  # 3 classes x 2 shots, then 6 queries
    np.testing.assert_allclose(drawn[0], b.context_x[1, 0].view(6, 6).numpy())
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    first = eps.class_names[int(b.info["classes"][1, 0])]
    assert len(labels) == 3 and labels[0].startswith(f"0: {first}")
    fig.canvas.draw()
    plt.close(fig)


def test_probabilities_as_bars_and_coloured_titles(episode):
    _, b = episode
    probs = torch.full((2, 6, 3), 0.1)
    probs[..., 0] = 0.8  # always predicts class 0: right on the class-0 queries only
    fig = plot_episode(b, probs, task=0, max_queries=4)
    bars = [ax for ax in fig.axes if ax.patches]
    assert len(bars) == 4 and all(len(ax.patches) == 3 for ax in bars)
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4
    for t in titles:
        true = int(t.get_text().split(" -> ")[0])
        assert t.get_text().endswith("-> 0 (0.80)")
        assert t.get_color() == ("tab:green" if true == 0 else "tab:red")
    assert sorted(int(t.get_text()[0]) for t in titles) == [0, 0, 1, 2]  # classes taken in turn
    fig.canvas.draw()
    plt.close(fig)


def test_errors(episode):
    _, b = episode
    with pytest.raises(ValueError, match=r"probs must have shape \[T, Nt, N\] = \[2, 6, 3\]"):
        plot_episode(b, torch.rand(2, 6, 4))
    with pytest.raises(ValueError, match="image_shape"):
        plot_episode(b, image_shape=(5, 5))
    with pytest.raises(ValueError, match="task must be"):
        plot_episode(b, task=2)
    with pytest.raises(ValueError, match="classification"):
        plot_episode(LinearTasks().sample(2, 3, 4, generator=torch.Generator().manual_seed(0)))
