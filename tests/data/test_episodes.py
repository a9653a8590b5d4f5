"""Episodes: N-way K-shot layout, examples belong to their classes, rotations, seeding, sizes, fit/evaluate."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_meta
from pyro_meta import MetaModel, observe, task_plate
from pyro_meta.data import Episodes, LabelledImages, TaskBatch


def _features(counts, first_label=10):
    """Feature rows ``[label, index]``: each sampled row says which class and which example it is."""
    labels = torch.cat([torch.full((n,), first_label + c) for c, n in enumerate(counts)])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # classes interleaved
    labels = labels[perm]
    x = torch.stack([labels.float(), torch.arange(len(labels)).float()], -1)
    return x, labels


def _check_membership(batch: TaskBatch, way: int):
    """Every real point's feature label is the class its episode label stands for; no example twice."""
    classes = batch.info["classes"]  # [T, N]
    for t in range(batch.num_tasks):
        assert classes[t].unique().numel() == way
        seen = []
        for split in ("context", "target"):
            x, y, m = batch.x(split)[t], batch.y(split)[t], batch.mask(split)[t]
            assert torch.equal(x[m, 0].long(), classes[t][y[m]])
            seen.append(x[m, 1])
        idx = torch.cat(seen)
        assert idx.unique().numel() == idx.numel()


def test_layout_shapes_and_labels(generator):
    x, labels = _features([6] * 7)
    eps = Episodes(x, labels, way=4, shots=2, queries=3)
    b = eps.sample(5, generator=generator)
    assert b.context_x.shape == (5, 8, 2) and b.target_x.shape == (5, 12, 2)
    assert b.context_y.dtype == torch.long and b.target_y.dtype == torch.long
    assert b.context_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert b.target_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert bool(b.context_mask.all()) and bool(b.target_mask.all())
    assert b.info["shots"].tolist() == [2] * 5 and b.info["queries"].tolist() == [3] * 5 and b.info["way"] == 4
    assert "image_shape" not in b.info and eps.image_shape is None and eps.num_classes == 7
    assert set(b.info["classes"].flatten().tolist()) <= set(range(10, 17))
    _check_membership(b, 4)


def test_ragged_classes_use_only_real_examples(generator):
    x, labels = _features([3, 9, 4, 3])
    eps = Episodes(x, labels, way=4, shots=1, queries=2)  # 3 per class needed: the smallest classes give all
    for _ in range(20):
        _check_membership(eps.sample(6, generator=generator), 4)


def test_episode_labels_are_a_uniform_random_assignment():
    """With way = all classes, label j of class c varies: each class takes each label ~1/N of the time."""
    x, labels = _features([3] * 4, first_label=0)
    b = Episodes(x, labels, way=4, shots=1, queries=1).sample(4000, generator=torch.Generator().manual_seed(1))
    freq = torch.zeros(4, 4)
    for j in range(4):
        freq[:, j] = torch.bincount(b.info["classes"][:, j], minlength=4).float() / 4000
    assert torch.allclose(freq, torch.full((4, 4), 0.25), atol=0.03), freq  # sd ~0.007


def test_seeding():
    x, labels = _features([5] * 6)
    eps = Episodes(x, labels, way=3, shots=2, queries=2)
    a = eps.sample(4, generator=torch.Generator().manual_seed(7))
    b = eps.sample(4, generator=torch.Generator().manual_seed(7))
    c = eps.sample(4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.context_x, b.context_x) and torch.equal(a.target_x, b.target_x)
    assert not torch.equal(a.context_x, c.context_x)
    torch.manual_seed(3)
    d = eps.sample(4)
    torch.manual_seed(3)
    assert torch.equal(d.target_x, eps.sample(4).target_x)


def test_size_ranges_are_drawn_per_episode_and_masked(generator):
    x, labels = _features([8] * 5)
    eps = Episodes(x, labels, way=3, shots=(1, 3), queries=(2, 4))
    b = eps.sample(200, generator=generator)
    shots, queries = b.info["shots"], b.info["queries"]
    assert set(shots.tolist()) == {1, 2, 3} and set(queries.tolist()) == {2, 3, 4}
    assert b.context_x.shape[1] == 9 and b.target_x.shape[1] == 12
    assert torch.equal(b.context_mask.sum(-1), 3 * shots) and torch.equal(b.target_mask.sum(-1), 3 * queries)
    _check_membership(b, 3)
    # num_context / num_target override the constructor's shots / queries
    b = eps.sample(2, num_context=4, num_target=1, generator=generator)
    assert b.context_x.shape[1] == 12 and b.target_x.shape[1] == 3
    assert eps.sample(2, num_target=0, generator=generator).target_x.shape == (2, 0, 2)


def test_errors():
    x, labels = _features([4, 4, 3])
    with pytest.raises(ValueError, match="exceeds the 3 examples of the smallest class"):
        Episodes(x, labels, way=2, shots=1, queries=3)
    eps = Episodes(x, labels, way=2, shots=1, queries=2)
    with pytest.raises(ValueError, match=r"num_context=None, num_target=None"):
        eps.sample(2, num_context=(3, 10), num_target=(10, 20))
    with pytest.raises(ValueError, match="way = 4 exceeds the 3 classes"):
        Episodes(x, labels, way=4)
    with pytest.raises(ValueError, match="num_context must satisfy 1 <= min"):
        eps.sample(2, num_context=0)
    with pytest.raises(TypeError, match="num_target must be an int"):
        eps.sample(2, num_target=1.5)
    with pytest.raises(ValueError, match="rotations need square images"):
        Episodes(x, labels, rotations=True, way=2, shots=1, queries=1)
    with pytest.raises(TypeError, match="labels must be an integer"):
        Episodes(x, labels.float(), way=2)
    with pytest.raises(ValueError, match="NaN"):
        Episodes(x.masked_fill(x == 1, float("nan")), labels, way=2, shots=1, queries=1)


def _images(num_classes, per_class, side=5):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(num_classes * per_class, side, side, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return images, labels


def test_rotations_are_new_classes_of_rotated_images(generator):
    images, labels = _images(3, 4)
    eps = Episodes(images, labels, way=5, shots=1, queries=2, rotations=True)
    assert eps.num_classes == 12 and eps.image_shape == (5, 5)
    b = eps.sample(30, generator=generator)
    assert b.info["image_shape"] == (5, 5) and b.context_x.shape == (30, 5, 25)
    assert set(b.info["rotations"].flatten().tolist()) == {0, 1, 2, 3}
    for t in range(30):
        pairs = set(zip(b.info["classes"][t].tolist(), b.info["rotations"][t].tolist()))
        assert len(pairs) == 5  # distinct (character, rotation) classes
        for split in ("context", "target"):
            xs, ys = b.x(split)[t].view(-1, 5, 5), b.y(split)[t]
            for img, j in zip(xs, ys.tolist()):
                c, r = int(b.info["classes"][t, j]), int(b.info["rotations"][t, j])
                originals = torch.rot90(images[labels == c], r, dims=(-2, -1))
                assert any(torch.equal(img, o) for o in originals), (t, j, c, r)


def _shifted(img, dy, dx):
    """``img [..., H, W]`` moved down ``dy`` and right ``dx`` pixels, 0-filled (an independent reference)."""
    H, W = img.shape[-2:]
    out = torch.zeros_like(img)
    out[..., max(dy, 0) : H + min(dy, 0), max(dx, 0) : W + min(dx, 0)] = img[
        ..., max(-dy, 0) : H + min(-dy, 0), max(-dx, 0) : W + min(-dx, 0)
    ]
    return out


@pytest.mark.parametrize("item_shape", [(6, 6), (2, 6, 6)])
def test_shift_translates_each_drawn_image_within_the_range(generator, item_shape):
    """``shift=s``: every drawn image is one of its class's images moved by some (dy, dx) in -s..s, 0-filled;
    the offsets vary across images and cover the range; shift=0 gives the same draws as no option."""
    g = torch.Generator().manual_seed(1)
    images = torch.zeros(4 * 5, *item_shape)
    images[..., 1:5, 1:5] = torch.rand(20, *item_shape[:-2], 4, 4, generator=g) + 0.1  # ink away from the border
    labels = torch.arange(4).repeat_interleave(5)
    eps = Episodes(images, labels, way=3, shots=2, queries=2, shift=1)
    b = eps.sample(40, generator=generator)
    moves = set()
    for t in range(40):
        for split in ("context", "target"):
            for img, j in zip(b.x(split)[t].view(-1, *item_shape), b.y(split)[t].tolist()):
                originals = images[labels == int(b.info["classes"][t, j])]
                found = [
                    (dy, dx)
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                    if any(torch.equal(img, _shifted(o, dy, dx)) for o in originals)
                ]
                assert found, (t, j)
                moves.add(found[0])
    assert len(moves) == 9  # all offsets of -1..1 in both directions occur
    plain = Episodes(images, labels, way=3, shots=2, queries=2).sample(5, generator=torch.Generator().manual_seed(3))
    zero = Episodes(images, labels, way=3, shots=2, queries=2, shift=0).sample(
        5, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(plain.context_x, zero.context_x) and torch.equal(plain.target_y, zero.target_y)
    x, lab = _features([4, 4])
    with pytest.raises(ValueError, match="shift needs images"):
        Episodes(x, lab, way=2, shots=1, queries=1, shift=1)
    with pytest.raises(ValueError, match="shift must be an int >= 0"):
        Episodes(images, labels, way=2, shift=-1)
    with pytest.raises(ValueError, match="smaller than the image size"):
        Episodes(images, labels, way=2, shift=6)


def test_from_images_groups_and_classes(generator):
    images, labels = _images(4, 3)
    data = LabelledImages(
        images,
        labels,
        ("a0", "a1", "b0", "b1"),
        torch.tensor([0, 0, 1, 1]),
        ("A", "B"),
        tuple(str(i) for i in range(12)),
    )
    eps = Episodes.from_images(data, groups=["B"], way=2, shots=1, queries=2)
    assert eps.class_names == ("b0", "b1")
    b = eps.sample(3, generator=generator)
    for t in range(3):  # every image comes from group B (classes 2, 3 of data)
        for img in b.context_x[t].view(-1, 5, 5):
            assert any(torch.equal(img, o) for o in images[6:])
    assert Episodes.from_images(data, classes=[0, 3], way=2, shots=1, queries=1).class_names == ("a0", "b1")


class _PrototypeClassifier(MetaModel):
    """``z_t ~ N(0, I)`` per task; ``y ~ Categorical(logits = scale * x . prototype_y + bias . z_t)``.

    A protocol check, not a good model: prototypes are the context class means (no gradient needed).
    """

    def __init__(self, way):
        super().__init__()
        self.way = way
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.shapes = []

    def _prototypes(self, batch):
        onehot = nn.functional.one_hot(batch.context_y, self.way).float() * batch.context_mask[..., None]
        return (onehot.transpose(1, 2) @ batch.context_x) / onehot.sum(1)[..., None].clamp_min(1)  # [T, N, D]

    def model(self, batch):
        self.shapes.append((tuple(batch.context_x.shape), tuple(batch.target_x.shape)))
        protos = self._prototypes(batch)
        with task_plate(batch):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.way), 1.0).to_event(1))
            observe(batch, lambda x: dist.Categorical(logits=self.scale * x @ protos.transpose(1, 2) + z))

    def guide(self, batch):
        with task_plate(batch):
            pyro.sample("z", dist.Normal(torch.zeros(batch.num_tasks, 1, self.way), 0.1).to_event(1))


def test_fit_and_evaluate_take_episodes():
    images, labels = _images(6, 6)
    eps = Episodes(images, labels, way=3, shots=2, queries=3)
    model = _PrototypeClassifier(3)
    pyro_meta.fit(model, eps, num_steps=3, tasks_per_batch=4, num_context=None, num_target=None, progress=False)
    assert model.shapes[0] == ((4, 6, 25), (4, 9, 25))  # fit passed None: the constructor's shots and queries
    table = pyro_meta.evaluate(
        model, eps, methods="amortized", num_tasks=5, num_context=[1, 2], num_target=2, num_samples=20, seed=0
    )
    rows = table.rows
    assert [r["num_context"] for r in rows] == [1, 2] and all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
