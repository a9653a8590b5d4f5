"""FeatureExtractor: padding never enters the network, caches serve only unchanged weights, memoize equals the net."""

import pytest
import torch

from pyro_meta.models._features import FeatureExtractor, class_means, encode_sets
from pyro_meta.testing import assert_close, toy_episodes


def _counting(extractor):
    calls = []
    extractor.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def test_padding_is_skipped_and_zero():
    torch.manual_seed(0)
    fe = FeatureExtractor("conv4", image_shape=(1, 16, 16), channels=3, feature_dim=5)
    x = torch.rand(2, 4, 256)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    calls = _counting(fe)
    h = fe(x, mask)  # training mode: batch norm over the 4 real images only
    assert calls == [4] and h.shape == (2, 4, 5)
    assert bool((h[~mask] == 0).all())
    assert_close(h[mask], fe(x[mask][None])[0], atol=1e-5, what="features of the real images")


def test_caches_serve_only_unchanged_weights_in_eval_mode():
    torch.manual_seed(0)
    fe = FeatureExtractor("mlp", x_dim=4, hidden=(6,), feature_dim=3)
    x = torch.randn(2, 5, 4)
    calls = _counting(fe)
    fe(x), fe(x)
    assert len(calls) == 2, "training mode never caches"
    fe.eval()
    with torch.no_grad():
        a = fe(x)
        b = fe(x)
    assert len(calls) == 3 and b is a, "the same tensor in eval mode is served from the cache"
    a2 = fe(x)  # gradients wanted for the weights: recomputed
    assert len(calls) == 4 and a2.requires_grad
    with torch.no_grad():
        fe.projection.weight.mul_(2.0)  # a changed weight invalidates the cache
        c = fe(x)
    assert len(calls) == 5 and not torch.allclose(c, a)
    with torch.no_grad():
        x.add_(1.0)  # so does an input changed in place
        fe(x)
    assert len(calls) == 6


def test_memoize_equals_the_network_and_skips_it():
    torch.manual_seed(0)
    tasks = toy_episodes(way=3, num_classes=5, per_class=6, image_shape=(16, 16), shots=2, queries=2)
    fe = FeatureExtractor("conv4", image_shape=(1, 16, 16), channels=3)
    fe(torch.rand(1, 8, 256))  # one training step's batch statistics
    fe.eval()
    table = tasks._x  # every image the episodes draw from, [M, 256]
    batch = tasks.sample(3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        direct = fe(batch.target_x)
    calls = _counting(fe)
    with fe.memoize(table), torch.no_grad():
        served = fe(batch.target_x)
        assert len(calls) == 1, "one pass over the table, none for the episode"
        outside = fe(torch.rand(3, 2, 256))  # not in the table: the network runs
        assert len(calls) == 2 and outside.shape == (3, 2, 3)
        mixed = torch.cat([batch.target_x[:1], torch.zeros_like(batch.target_x[:1])])  # + a task of blank rows
        h = fe(mixed)
        assert calls[2:] == [mixed.shape[1]], "only the rows missing from the table run the network"
        assert_close(h[0], direct[0], atol=1e-5, what="served rows of a mixed input")
        assert_close(h[1], fe._run(mixed[1]), atol=1e-5, what="computed rows of a mixed input")
    with fe.memoize(table):  # gradients on (a gradient-based guide's inner loop): the table still serves
        again = fe(batch.target_x)
        assert len(calls) == 5 and not again.requires_grad
        with fe.memoize(table[:4]):  # a nested block: on leaving it, the outer table serves again
            assert len(calls) == 6
        fe(batch.target_x.clone())
        assert len(calls) == 6, "the outer table still serves after the inner block"
    assert_close(served, direct, atol=1e-5, what="memoized features")
    with pytest.raises(ValueError, match="images"):
        with fe.memoize(torch.rand(3, 10)):
            pass


def test_class_means_and_sets():
    h = torch.randn(2, 6, 3)
    y = torch.tensor([[0, 1, 1, 2, 0, 0], [2, 2, 0, 0, 1, 1]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 5] = False
    means, counts = class_means(h, y, mask, 4)
    for t in range(2):
        for k in range(4):
            sel = mask[t] & (y[t] == k)
            assert counts[t, k] == sel.sum()
            expected = h[t][sel].mean(0) if sel.any() else torch.zeros(3)
            assert_close(means[t, k], expected, atol=1e-6, what=f"mean of class {k} in task {t}")
    fe = FeatureExtractor("mlp", x_dim=4, hidden=(6,))
    batch = toy_episodes(way=3, dim=4).sample(2)
    hc, ht = encode_sets(fe, batch)
    assert hc.shape == (2, 3, 6) and ht.shape == (2, 6, 6)
    hc0, ht0 = encode_sets(fe, batch.context_only())
    assert ht0.shape == (2, 0, 6)


def test_test_shifts_average_the_features_over_translations_in_eval_mode_only():
    torch.manual_seed(0)
    fe = FeatureExtractor("conv4", image_shape=(1, 16, 16), channels=3, feature_dim=5, test_shifts=1)
    x = torch.rand(2, 3, 256)
    plain = FeatureExtractor("conv4", image_shape=(1, 16, 16), channels=3, feature_dim=5)
    plain.load_state_dict(fe.state_dict())
    assert_close(fe(x), plain(x), atol=1e-6, what="training mode runs the net once")
    fe.eval(), plain.eval()
    img = torch.nn.functional.pad(x.reshape(6, 1, 16, 16), (1, 1, 1, 1))
    with torch.no_grad():
        # every (dy, dx) in -1..1: the image moved by (dy, dx) (zero-filled), then the plain net
        copies = [
            img[..., 1 - dy : 17 - dy, 1 - dx : 17 - dx].reshape(2, 3, 256) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
        ]
        want = torch.stack([plain(c) for c in copies]).mean(0)
        got = fe(x)
        assert_close(got, want, atol=1e-5, what="mean of the nine translated copies' features")
        assert not torch.allclose(got, plain(x), atol=1e-3), "the average differs from the unshifted features"
        images = x.reshape(6, 256)
        with fe.memoize(images):
            assert_close(fe(x), want, atol=1e-5, what="memoized shift-averaged features")
            fe.test_shifts = 0  # the memo was built with shifts: changing them invalidates it
            assert_close(fe(x), plain(x), atol=1e-5, what="after test_shifts = 0")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(test_shifts=-1), "test_shifts must be an int >= 0"),
        (dict(test_shifts=True), "test_shifts must be an int >= 0"),
        (dict(test_shifts=16), "smaller than the image size"),
        (dict(backbone="mlp", image_shape=None, x_dim=4, test_shifts=1), "needs backbone='conv4'"),
    ],
)
def test_test_shifts_bad_values_are_refused(kwargs, match):
    args = dict(backbone="conv4", image_shape=(1, 16, 16), channels=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FeatureExtractor(**args)


@pytest.mark.parametrize("name", ["ProtoNet", "BayesianLastLayer", "NeuralProcessClassifier"])
def test_image_classifiers_pass_test_shifts_to_their_extractor(name):
    import pyro_meta.models as zoo

    model = getattr(zoo, name)(image_shape=(1, 16, 16), channels=3, test_shifts=1)
    assert model.features.test_shifts == 1
    with pytest.raises(ValueError, match="test_shifts"):
        getattr(zoo, name)(image_shape=(1, 16, 16), channels=3, test_shifts=-1)
