"""LabelledImages: validation, class/group selection with relabelling, class-disjoint splits."""

import pytest
import torch

from pyro_meta.data import LabelledImages


def _toy(counts=(2, 3, 1, 2), groups=(0, 1, 0, 2)):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = labels.float()[:, None, None].expand(-1, 2, 3).clone()  # image value = class index
    return LabelledImages(
        images=images,
        labels=labels,
        class_names=tuple(f"c{c}" for c in range(len(counts))),
        class_groups=torch.tensor(groups),
        group_names=("g0", "g1", "g2"),
        paths=tuple(f"f{i}" for i in range(len(labels))),
    )


def test_properties():
    d = _toy()
    assert len(d) == 8 and d.num_classes == 4 and d.num_groups == 3 and d.image_shape == (2, 3)
    assert d.class_counts().tolist() == [2, 3, 1, 2]
    assert d.groups.tolist() == [0, 0, 1, 1, 1, 0, 2, 2]


def test_select_classes_relabels_in_the_given_order():
    d = _toy().select_classes([3, 1])
    assert d.class_names == ("c3", "c1") and d.labels.tolist() == [1, 1, 1, 0, 0]
    assert d.group_names == ("g1", "g2") and d.class_groups.tolist() == [1, 0]
    # every image keeps its class: the stored value is the old class index
    old = torch.tensor([3, 1])[d.labels]
    assert torch.equal(d.images[:, 0, 0], old.float())
    assert d.paths == ("f2", "f3", "f4", "f6", "f7")


def test_select_groups():
    d = _toy().select_groups(["g0"])
    assert d.class_names == ("c0", "c2") and d.group_names == ("g0",) and len(d) == 3
    assert _toy().select_groups([2, "g1"]).class_names == ("c1", "c3")
    with pytest.raises(ValueError, match="unknown group 'g9'"):
        _toy().select_groups(["g9"])


def test_split_is_class_disjoint_and_seeded():
    d = _toy(counts=(1,) * 10, groups=(0, 1, 2) * 3 + (0,))
    parts = d.split((0.6, 0.2, 0.2), seed=3)
    names = [set(p.class_names) for p in parts]
    assert [len(n) for n in names] == [6, 2, 2]
    assert set.union(*names) == set(d.class_names) and not names[0] & names[1] and not names[1] & names[2]
    assert [p.class_names for p in d.split(seed=3)] == [p.class_names for p in parts]
    assert [p.class_names for p in d.split(seed=4)] != [p.class_names for p in parts]
    by_group = _toy().split((0.5, 0.5), by="group", seed=0)
    assert sorted(g for p in by_group for g in p.group_names) == ["g0", "g1", "g2"]
    with pytest.raises(ValueError, match="summing to 1"):
        d.split((0.5, 0.2))
    with pytest.raises(ValueError, match="leave a part empty"):
        _toy().split((0.9, 0.05, 0.05), by="group")


def test_validation_errors():
    d = _toy()
    with pytest.raises(ValueError, match="float32"):
        LabelledImages(d.images.double(), d.labels, d.class_names, d.class_groups, d.group_names, d.paths)
    with pytest.raises(ValueError, match="labels must lie"):
        LabelledImages(d.images, d.labels + 1, d.class_names, d.class_groups, d.group_names, d.paths)
    with pytest.raises(ValueError, match="class_groups must be a long tensor"):
        LabelledImages(d.images, d.labels, d.class_names, d.class_groups[:2], d.group_names, d.paths)
    with pytest.raises(ValueError, match="have no image"):
        LabelledImages(
            d.images, d.labels, d.class_names + ("c4",), torch.tensor([0, 1, 0, 2, 0]), d.group_names, d.paths
        )
    with pytest.raises(ValueError, match="paths"):
        LabelledImages(d.images, d.labels, d.class_names, d.class_groups, d.group_names, d.paths[:3])
