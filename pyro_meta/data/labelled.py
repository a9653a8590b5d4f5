"""``LabelledImages``: images with class labels, classes grouped (e.g. characters by alphabet).

Returned by :func:`pyro_meta.data.load_omniglot`, :func:`pyro_meta.data.read_omniglot` and
:func:`pyro_meta.data.read_image_folder`; :class:`pyro_meta.data.Episodes` draws few-shot tasks from it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence, Tuple, Union

import torch

__all__ = ["LabelledImages"]


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledImages:
    """``N`` grayscale images of ``C`` classes in ``G`` groups.

    Parameters
    ----------
    images : float32 Tensor ``[N, H, W]``
        Ink intensity in ``[0, 1]`` (ink = 1, background = 0).
    labels : long Tensor ``[N]``
        Class of each image, in ``0 .. C-1`` (an index into ``class_names``).
    class_names : tuple of str, length ``C``
        E.g. ``"Greek/character01"``.
    class_groups : long Tensor ``[C]``
        Group of each class, in ``0 .. G-1`` (an index into ``group_names``): for Omniglot the alphabet.
    group_names : tuple of str, length ``G``
    paths : tuple of str, length ``N``
        Where each image came from (relative to the folder that was read).

    Every class has at least one image and every group at least one class; a violation raises
    ``ValueError``/``TypeError`` naming the field.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: Tuple[str, ...]
    class_groups: torch.Tensor
    group_names: Tuple[str, ...]
    paths: Tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels, groups = self.images, self.labels, self.class_groups
        for name, t in (("images", images), ("labels", labels), ("class_groups", groups)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if images.dim() != 3 or images.dtype != torch.float32:
            raise ValueError(f"images must be a float32 tensor [N, H, W], got {images.dtype} {tuple(images.shape)}")
        N = images.shape[0]
        if N == 0:
            raise ValueError("images is empty: a LabelledImages needs at least one image")
        for name in ("class_names", "group_names", "paths"):
            object.__setattr__(self, name, tuple(str(s) for s in getattr(self, name)))
        C, G = len(self.class_names), len(self.group_names)
        if labels.dtype != torch.long or tuple(labels.shape) != (N,):
            raise ValueError(f"labels must be a long tensor [N] = [{N}], got {labels.dtype} {tuple(labels.shape)}")
        if groups.dtype != torch.long or tuple(groups.shape) != (C,):
            raise ValueError(
                f"class_groups must be a long tensor [C] = [{C}] (one group per class name), "
                f"got {groups.dtype} {tuple(groups.shape)}"
            )
        if len(self.paths) != N:
            raise ValueError(f"paths must hold one entry per image (N = {N}), got {len(self.paths)}")
        if int(labels.min()) < 0 or int(labels.max()) >= C:
            raise ValueError(
                f"labels must lie in 0 .. C-1 = {C - 1}, got range {int(labels.min())}..{int(labels.max())}"
            )
        if C and (int(groups.min()) < 0 or int(groups.max()) >= G):
            raise ValueError(f"class_groups must lie in 0 .. G-1 = {G - 1}")
        empty = torch.nonzero(torch.bincount(labels, minlength=C) == 0).flatten().tolist()
        if empty:
            raise ValueError(f"classes {[self.class_names[c] for c in empty[:5]]} have no image")
        unused = torch.nonzero(torch.bincount(groups, minlength=G) == 0).flatten().tolist()
        if unused:
            raise ValueError(f"groups {[self.group_names[g] for g in unused[:5]]} have no class")

    # ----------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        """``G``."""
        return len(self.group_names)

    @property
    def image_shape(self) -> Tuple[int, int]:
        """``(H, W)``."""
        return tuple(self.images.shape[1:])

    @property
    def groups(self) -> torch.Tensor:
        """Group of each image, long ``[N]``."""
        return self.class_groups[self.labels]

    def class_counts(self) -> torch.Tensor:
        """Images per class, long ``[C]``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    # ------------------------------------------------------------ subsetting
    def select_classes(self, classes: Union[Sequence[int], torch.Tensor]) -> "LabelledImages":
        """The images of ``classes`` (class indices), relabelled ``0 .. len(classes)-1`` in the given order.

        Groups left without a class are dropped (groups are renumbered in their original order).
        """
        idx = torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes, dtype=torch.long)
        if idx.dim() != 1 or idx.numel() == 0:
            raise ValueError("classes must be a non-empty list of class indices")
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_classes:
            raise ValueError(f"classes must be indices in 0 .. {self.num_classes - 1}, got {idx.tolist()}")
        if idx.unique().numel() != idx.numel():
            raise ValueError(f"classes has repeated indices: {idx.tolist()}")
        new_label = torch.full((self.num_classes,), -1, dtype=torch.long)
        new_label[idx] = torch.arange(idx.numel())
        keep = new_label[self.labels] >= 0
        old_groups = self.class_groups[idx]
        kept_groups = old_groups.unique(sorted=True)
        group_map = torch.full((self.num_groups,), -1, dtype=torch.long)
        group_map[kept_groups] = torch.arange(kept_groups.numel())
        where = torch.nonzero(keep).flatten().tolist()
        return LabelledImages(
            images=self.images[keep],
            labels=new_label[self.labels[keep]],
            class_names=tuple(self.class_names[c] for c in idx.tolist()),
            class_groups=group_map[old_groups],
            group_names=tuple(self.group_names[g] for g in kept_groups.tolist()),
            paths=tuple(self.paths[i] for i in where),
        )

    def select_groups(self, groups: Iterable[Union[str, int]]) -> "LabelledImages":
        """The images of the classes in ``groups`` (names or indices), in the original class order."""
        groups = list(groups) if not isinstance(groups, str) else [groups]
        if not groups:
            raise ValueError("groups must name at least one group")
        ids = []
        for g in groups:
            if isinstance(g, str):
                if g not in self.group_names:
                    raise ValueError(f"unknown group {g!r}; groups are {list(self.group_names)}")
                ids.append(self.group_names.index(g))
            elif isinstance(g, int) and not isinstance(g, bool) and 0 <= g < self.num_groups:
                ids.append(g)
            else:
                raise ValueError(f"groups must be names or indices in 0 .. {self.num_groups - 1}, got {g!r}")
        mask = torch.isin(self.class_groups, torch.as_tensor(ids, dtype=torch.long))
        return self.select_classes(torch.nonzero(mask).flatten())

    def split(
        self, fractions: Sequence[float] = (0.6, 0.2, 0.2), by: str = "class", seed: int = 0
    ) -> Tuple["LabelledImages", ...]:
        """Class-disjoint parts (e.g. meta-train / meta-val / meta-test) of the classes or of whole groups.

        The classes (``by="class"``) or groups (``by="group"``) are shuffled with ``seed`` and cut into
        ``len(fractions)`` parts of sizes ``round(cumsum(fractions) * count)`` differences; every part must
        get at least one. Within a part the original order is kept. For the shipped Omniglot alphabets use
        the fixed :data:`pyro_meta.data.OMNIGLOT_SPLITS` instead.
        """
        if by not in ("class", "group"):
            raise ValueError(f"by must be 'class' or 'group', got {by!r}")
        fr = [float(f) for f in fractions]
        if len(fr) < 2 or any(not f > 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"fractions must be two or more positive numbers summing to 1, got {list(fractions)}")
        count = self.num_classes if by == "class" else self.num_groups
        bounds, acc = [0], 0.0
        for f in fr:
            acc += f
            bounds.append(int(round(acc * count)))
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if min(sizes) < 1:
            raise ValueError(f"fractions {fr} of {count} {by} units leave a part empty (sizes {sizes})")
        perm = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
        parts = [perm[a:b].sort().values for a, b in zip(bounds[:-1], bounds[1:])]
        if by == "class":
            return tuple(self.select_classes(p) for p in parts)
        return tuple(self.select_groups(p.tolist()) for p in parts)

    def __repr__(self) -> str:
        return (
            f"LabelledImages(N={len(self)}, image_shape={self.image_shape}, classes={self.num_classes}, "
            f"groups={self.num_groups})"
        )
