"""TaskBatch: validation names the field and the expected shape; padding, masks and slicing."""

import pytest
import torch

from pyro_meta.data import TaskBatch


def make(T=2, Nc=3, Nt=4, Dx=1, Dy=1, **kw):
    fields = dict(
        context_x=torch.randn(T, Nc, Dx), context_y=torch.randn(T, Nc, Dy),
        target_x=torch.randn(T, Nt, Dx), target_y=torch.randn(T, Nt, Dy),
    )
    fields.update(kw)
    return TaskBatch(**fields)


def test_valid_batch_defaults_masks_to_all_true():
    b = make()
    assert b.context_mask.dtype == torch.bool and bool(b.context_mask.all())
    assert b.target_mask.shape == (2, 4)
    assert (b.num_tasks, b.x_dim, b.y_dim) == (2, 1, 1)


@pytest.mark.parametrize(
    "change, field, exc",
    [
        (dict(context_x=torch.randn(2, 3)), "context_x", ValueError),
        (dict(target_x=torch.randn(3, 4, 1)), "target_x", ValueError),
        (dict(target_x=torch.randn(2, 4, 2)), "target_x", ValueError),
        (dict(context_y=torch.randn(2, 5, 1)), "context_y", ValueError),
        (dict(target_y=torch.randn(3, 4, 1)), "target_y", ValueError),
        (dict(target_y=torch.randn(2, 4, 2)), "target_y", ValueError),
        (dict(context_mask=torch.ones(2, 3)), "context_mask", TypeError),
        (dict(context_mask=torch.ones(2, 2, dtype=torch.bool)), "context_mask", ValueError),
        (dict(target_mask=torch.ones(1, 4, dtype=torch.bool)), "target_mask", ValueError),
        (dict(context_x=torch.tensor([[[float("nan")]] * 3] * 2)), "context_x", ValueError),
        (dict(target_y=torch.full((2, 4, 1), float("inf"))), "target_y", ValueError),
        (dict(context_x=torch.zeros(2, 3, 1, dtype=torch.long)), "context_x", TypeError),
        (dict(context_y=torch.zeros(2, 3, dtype=torch.bool)), "context_y", TypeError),
        (dict(context_x=[[0.0]]), "context_x", TypeError),
        (dict(context_mask=torch.tensor([[True, True, True], [False, False, False]])), "context_mask", ValueError),
        (dict(context_x=torch.randn(2, 0, 1), context_y=torch.randn(2, 0, 1)), "context_x", ValueError),
        (dict(context_x=torch.randn(0, 3, 1)), "context_x", ValueError),
    ],
)
def test_bad_input_names_the_field(change, field, exc):
    with pytest.raises(exc, match=field):
        make(**change)


def test_empty_context_allowed_when_asked():
    b = make(context_mask=torch.zeros(2, 3, dtype=torch.bool), allow_empty_context=True)
    assert not bool(b.context_mask.any())


def test_class_labels():
    b = make(context_y=torch.randint(0, 3, (2, 3)), target_y=torch.randint(0, 3, (2, 4)))
    assert b.is_classification and b.y_dim == 1
    with pytest.raises(ValueError, match="target_y"):
        make(context_y=torch.randint(0, 3, (2, 3)), target_y=torch.randn(2, 4, 1))


def test_from_tasks_pads_and_masks():
    ctx = [(torch.randn(2, 1), torch.randn(2, 1)), (torch.randn(5, 1), torch.randn(5, 1))]
    tgt = [(torch.randn(3, 1), torch.randn(3, 1)), (torch.randn(1, 1), torch.randn(1, 1))]
    b = TaskBatch.from_tasks(ctx, tgt, info={"id": torch.tensor([7, 8])})
    assert b.context_x.shape == (2, 5, 1) and b.target_x.shape == (2, 3, 1)
    assert b.context_mask.sum(-1).tolist() == [2, 5] and b.target_mask.sum(-1).tolist() == [3, 1]
    assert torch.equal(b.context_x[1], ctx[1][0]) and torch.equal(b.target_y[0], tgt[0][1])
    assert bool(torch.isfinite(b.context_x).all())
    with pytest.raises(ValueError, match="target"):
        TaskBatch.from_tasks(ctx, tgt[:1])
    with pytest.raises(ValueError, match="points"):
        TaskBatch.from_tasks([(torch.randn(2, 1), torch.randn(3, 1))])


def test_select_context_only_and_observed():
    b = make(T=3, info={"a": torch.arange(3), "name": "sine"})
    s = b.select([2, 0])
    assert torch.equal(s.context_x, b.context_x[[2, 0]]) and s.info["a"].tolist() == [2, 0] and s.info["name"] == "sine"
    c = b.context_only()
    assert c.num_points("target") == 0 and torch.equal(c.context_y, b.context_y)
    x, y, m = b.observed()
    assert x.shape == (3, 7, 1) and m.shape == (3, 7)
    x, y, m = b.without_target_y().observed()
    assert x.shape == (3, 3, 1)
    with pytest.raises(ValueError, match="split"):
        b.x("query")
    assert torch.equal(b.select([-1]).context_x, b.context_x[[2]])
    with pytest.raises(IndexError, match="3 tasks"):
        b.select([0, 3])


def test_frozen():
    b = make()
    with pytest.raises(AttributeError):
        b.context_x = torch.zeros(2, 3, 1)
