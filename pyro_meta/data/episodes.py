"""``Episodes``: N-way K-shot classification tasks from labelled arrays (images or feature vectors).

A task distribution for :func:`pyro_meta.fit` and :func:`pyro_meta.evaluate`:
``sample(num_tasks, num_context, num_target, generator=)`` returns a :class:`TaskBatch` whose context holds
``K`` examples ("shots") of each of ``N`` classes and whose target holds ``Q`` other examples ("queries")
of the same classes, labelled ``0 .. N-1`` in a fresh random order per episode.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch

from .batch import TaskBatch
from .labelled import LabelledImages
from .tasks import sample_sizes

__all__ = ["Episodes", "SizeArg"]

#: Shots or queries per class: an int, or an inclusive ``(min, max)`` range drawn per episode.
SizeArg = Union[int, Tuple[int, int]]


def _size_range(spec: Any, name: str, minimum: int) -> Tuple[int, int]:
    if isinstance(spec, bool) or not isinstance(spec, (int, tuple, list)):
        raise TypeError(f"{name} must be an int or an inclusive (min, max) pair of ints, got {spec!r}")
    if isinstance(spec, int):
        lo = hi = spec
    else:
        if len(spec) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in spec):
            raise ValueError(f"{name} must be an inclusive (min, max) pair of ints, got {spec!r}")
        lo, hi = spec
    if lo < minimum or hi < lo:
        raise ValueError(f"{name} must satisfy {minimum} <= min <= max, got {spec!r}")
    return lo, hi


class Episodes:
    """N-way K-shot episodes with Q queries per class from labelled data ``x [M, ...]``, ``labels [M]``.

    Parameters
    ----------
    x : float Tensor
        Examples ``[M, *item_shape]``: images ``[M, H, W]`` (e.g. :class:`LabelledImages` ``.images``) or feature vectors ``[M, D]``.
    labels : integer Tensor ``[M]``
        Class of each example (any non-negative ids; the classes are the distinct values).
    way : int
        Classes per episode ``N``.
    shots, queries : int or (min, max)
        Default context examples ``K`` and target examples ``Q`` per class; a range is drawn per episode
        (the sets are then padded to the range's max and masked).
    rotations : bool
        Add the images rotated by 90, 180 and 270 degrees as new classes (the MAML protocol's
        augmentation, 4 x the classes). Needs square images (``item_shape[-2] == item_shape[-1]``); the
        rotated copies are stored (4 x the memory of ``x``) so that sampling is one gather.
    shift : int
        Translate every drawn image by ``(dy, dx)``, each uniform on ``-shift .. shift`` pixels and drawn
        per image per episode, filling with 0 (Omniglot's background): a training augmentation against
        overfitting few classes. 0 (default): the stored images, and the same draws as without the option.
    class_names : sequence of str, optional
        Name of each label value (indexed by label), for plots.

    Notes
    -----
    ``sample(T, num_context, num_target, generator=)`` returns a :class:`TaskBatch` with

    * ``context_x [T, N*K, D]``, ``target_x [T, N*Q, D]``: examples flattened (``D = prod(item_shape)``),
      grouped by class (class 0's K shots first);
    * ``context_y`` long ``[T, N*K]``, ``target_y`` long ``[T, N*Q]``: episode labels ``0 .. N-1``;
      label ``j`` is the class ``info["classes"][t, j]``, a uniformly random assignment per episode;
    * ``info``: ``"classes"`` long ``[T, N]`` (the original label values), ``"rotations"`` long ``[T, N]``
      (quarter turns counter-clockwise, ``torch.rot90``; zeros without ``rotations``), ``"shots"`` and
      ``"queries"`` long ``[T]``, ``"way"`` (``N``) and, for images, ``"image_shape"`` (``item_shape``).

    ``num_context`` is the shots per class ``K`` and ``num_target`` the queries per class ``Q``, each an int
    or an inclusive ``(min, max)`` range drawn per episode; None uses the constructor's ``shots``/``queries``
    (as :func:`pyro_meta.fit` and :func:`pyro_meta.evaluate` do by default: :attr:`default_num_context` and
    :attr:`default_num_target` are None). Each class needs at least ``max K + max Q`` examples, else
    ``ValueError``.
    Examples within an episode are distinct; draws use ``generator`` (torch's global RNG without one).
    """

    #: ``fit``/``evaluate`` set sizes when not given: None, i.e. this distribution's shots and queries
    default_num_context = None
    default_num_target = None

    def __init__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        way: int = 5,
        shots: SizeArg = 1,
        queries: SizeArg = 15,
        rotations: bool = False,
        class_names: Optional[Sequence[str]] = None,
        shift: int = 0,
    ) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a float torch.Tensor [M, *item_shape], got {type(x).__name__}")
        if not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty float tensor [M, *item_shape], got {x.dtype} {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or inf values")
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer torch.Tensor [M], got {getattr(labels, 'dtype', type(labels))}")
        if tuple(labels.shape) != (x.shape[0],):
            raise ValueError(f"labels must have shape [M] = [{x.shape[0]}], got {tuple(labels.shape)}")
        labels = labels.long()
        if int(labels.min()) < 0:
            raise ValueError("labels must be non-negative integers")
        if isinstance(way, bool) or not isinstance(way, int) or way < 2:
            raise ValueError(f"way must be an int >= 2 (classes per episode), got {way!r}")
        self.way = way
        self.shots = shots
        self.queries = queries
        self.rotations = bool(rotations)
        self.item_shape = tuple(x.shape[1:])
        self.image_shape = self.item_shape if len(self.item_shape) >= 2 else None
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"shift must be an int >= 0 (pixels), got {shift!r}")
        if shift and self.image_shape is None:
            raise ValueError(f"shift needs images [M, H, W] or [M, C, H, W], got item_shape {self.item_shape}")
        if shift and shift >= min(self.item_shape[-2:]):
            raise ValueError(f"shift = {shift} must be smaller than the image size {self.item_shape[-2:]}")
        self.shift = shift
        if self.rotations and (self.image_shape is None or self.item_shape[-1] != self.item_shape[-2]):
            raise ValueError(f"rotations need square images [M, H, W] with H == W, got item_shape {self.item_shape}")

        # examples sorted by class: class c owns rows start[c] .. start[c] + count[c] - 1
        self.class_labels, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        x = x[order]
        if self.rotations:  # the table holds every rotation: row r * M + i is example i turned r quarter turns
            x = torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])
        self._x = x.reshape(x.shape[0], -1).contiguous()
        self._num_examples = labels.shape[0]
        self._counts = counts
        self._start = torch.cumsum(counts, 0) - counts
        self._max_count = int(counts.max())
        self._equal_counts = bool((counts == self._max_count).all())
        if class_names is not None:
            class_names = tuple(str(n) for n in class_names)
            if len(class_names) <= int(self.class_labels.max()):
                raise ValueError(
                    f"class_names must name every label value 0 .. {int(self.class_labels.max())}, "
                    f"got {len(class_names)} names"
                )
        self.class_names = class_names
        if way > self.num_classes:
            raise ValueError(f"way = {way} exceeds the {self.num_classes} classes available")
        self._check_sizes(_size_range(shots, "shots", 1), _size_range(queries, "queries", 0), "shots", "queries")

    # ------------------------------------------------------------ construction
    @classmethod
    def from_images(
        cls,
        data: LabelledImages,
        groups: Optional[Sequence[Union[str, int]]] = None,
        classes: Optional[Sequence[int]] = None,
        **kwargs: Any,
    ) -> "Episodes":
        """Episodes over a :class:`LabelledImages`, optionally only the classes of ``groups`` or ``classes``.

        ``kwargs`` go to the constructor (``way``, ``shots``, ``queries``, ``rotations``).
        """
        if not isinstance(data, LabelledImages):
            raise TypeError(f"data must be a LabelledImages, got {type(data).__name__}")
        if groups is not None:
            data = data.select_groups(groups)
        if classes is not None:
            data = data.select_classes(classes)
        return cls(data.images, data.labels, class_names=data.class_names, **kwargs)

    # ------------------------------------------------------------------ sizes
    @property
    def num_classes(self) -> int:
        """Classes an episode draws from (4 x the distinct labels with ``rotations``)."""
        return self.class_labels.numel() * (4 if self.rotations else 1)

    @property
    def x_dim(self) -> int:
        """``D = prod(item_shape)``, the width of ``context_x``/``target_x``."""
        return self._x.shape[1]

    def _check_sizes(
        self, shots: Tuple[int, int], queries: Tuple[int, int], shots_name: str, queries_name: str
    ) -> None:
        need = shots[1] + queries[1]
        smallest = int(self._counts.argmin())
        have = int(self._counts[smallest])
        if need > have:
            label = int(self.class_labels[smallest])
            name = repr(self.class_names[label]) if self.class_names is not None else f"label {label}"
            raise ValueError(
                f"{shots_name} (shots per class, max {shots[1]}) + {queries_name} (queries per class, max "
                f"{queries[1]}) = {need} exceeds the {have} examples of the smallest class ({name}); "
                "pass num_context=None, num_target=None (fit's and evaluate's default) to use this "
                "distribution's shots and queries"
            )

    # --------------------------------------------------------------- sampling
    def sample(
        self,
        num_tasks: int = 16,
        num_context: Optional[SizeArg] = None,
        num_target: Optional[SizeArg] = None,
        generator: Optional[torch.Generator] = None,
    ) -> TaskBatch:
        """Draw ``num_tasks`` episodes; ``num_context``/``num_target`` are shots/queries per class (see class doc)."""
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        shots_spec = self.shots if num_context is None else num_context
        queries_spec = self.queries if num_target is None else num_target
        k_range = _size_range(shots_spec, "num_context", 1)
        q_range = _size_range(queries_spec, "num_target", 0)
        self._check_sizes(k_range, q_range, "num_context", "num_target")
        T, N, K, Q, D = num_tasks, self.way, k_range[1], q_range[1], self.x_dim
        shots = sample_sizes(k_range, T, "num_context", generator)
        queries = sample_sizes(q_range, T, "num_target", generator)

        # N distinct classes per episode, in random order: label j <-> classes[:, j]
        chosen = torch.rand(T, self.num_classes, generator=generator).topk(N, dim=-1).indices
        base, turns = (chosen // 4, chosen % 4) if self.rotations else (chosen, torch.zeros_like(chosen))
        # K + Q distinct examples of each chosen class
        keys = torch.rand(T, N, self._max_count, generator=generator)
        if not self._equal_counts:
            keys = keys.masked_fill(torch.arange(self._max_count) >= self._counts[base][..., None], -1.0)
        pos = keys.topk(K + Q, dim=-1).indices
        rows = self._start[base][..., None] + pos + (turns * self._num_examples)[..., None]  # [T, N, K+Q]
        cx = self._x.index_select(0, rows[:, :, :K].reshape(-1)).view(T, N * K, D)
        tx = self._x.index_select(0, rows[:, :, K:].reshape(-1)).view(T, N * Q, D)
        if self.shift:
            cx, tx = (self._translate(v, generator) for v in (cx, tx))

        labels = torch.arange(N).view(1, N, 1)
        cy = labels.expand(T, N, K).reshape(T, N * K)
        ty = labels.expand(T, N, Q).reshape(T, N * Q)
        cmask = (torch.arange(K) < shots[:, None, None]).expand(T, N, K).reshape(T, N * K)
        tmask = (torch.arange(Q) < queries[:, None, None]).expand(T, N, Q).reshape(T, N * Q)
        info = {
            "classes": self.class_labels[base],
            "rotations": turns,
            "shots": shots,
            "queries": queries,
            "way": N,
        }
        if self.image_shape is not None:
            info["image_shape"] = self.image_shape
        return TaskBatch(cx, cy, tx, ty, cmask, tmask, info)

    def _translate(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Each flattened image of ``x [T, n, D]`` moved by random ``(dy, dx)`` in ``-shift .. shift``, 0-filled."""
        s, (H, W) = self.shift, self.item_shape[-2:]
        lead = x.shape[:-1]
        img = x.reshape(-1, *self.item_shape[:-2], H, W)
        B = img.shape[0]
        pad = torch.nn.functional.pad(img, (s, s, s, s))  # [B, ..., H + 2s, W + 2s]
        off = torch.randint(0, 2 * s + 1, (2, B), generator=generator)  # crop corner: shift = s - off
        r = (off[0][:, None] + torch.arange(H))[:, :, None]  # [B, H, 1]
        c = (off[1][:, None] + torch.arange(W))[:, None, :]  # [B, 1, W]
        b = torch.arange(B)[:, None, None]
        moved = pad.movedim(0, -3)[..., b, r, c].movedim(-3, 0)  # [B, ..., H, W]
        return moved.reshape(*lead, -1)

    def __repr__(self) -> str:
        return (
            f"Episodes(way={self.way}, shots={self.shots}, queries={self.queries}, rotations={self.rotations}, "
            f"classes={self.num_classes}, item_shape={self.item_shape}, shift={self.shift})"
        )
