"""``FeatureExtractor``: the shared (meta-learned, not per-task) feature map of the zoo's classifiers.

``h(x)`` maps each point of a padded set, ``x [..., T, N, D] -> h [..., T, N, F]``, with one set of
weights for every task: a Conv-4 of ordinary torch modules (four blocks of ``3x3 conv -> batch norm ->
ReLU -> 2x2 max-pool``, the few-shot backbone of Vinyals et al. 2016 / Snell et al. 2017) on flattened
images, or an MLP on feature vectors, optionally followed by a linear projection to ``feature_dim``.

Batch norm is the standard module: in training mode it normalises with the statistics of the images
of the current call (every task of the meta-batch) and updates running statistics; in eval mode
(``infer``, ``evaluate``) it uses the running statistics, so that a point's features depend on that
point only. Padded points (``mask`` False) are not passed through the network (their features are 0),
so they never enter the statistics.

Evaluating the network is the expensive part of every classifier here; two caches avoid repeating it
while the weights do not change (eval mode, no gradient needed for the weights -- e.g. inside NUTS,
where the network is frozen and the potential is evaluated thousands of times on the same images):

* the last few inputs are remembered by identity (the same tensor object, unmodified; weakly referenced,
  so that the cache never keeps a batch alive);
* :meth:`FeatureExtractor.memoize` computes the features of a table of images once (e.g. every image of
  the meta-test alphabets) and serves any input made of those images by lookup: each input row is
  matched to a table row by a random projection and then compared exactly, falling back to the network
  when any row is not in the table.

Both are checked against the weights' and buffers' version counters, so a changed weight is never
served from a cache.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pyro_meta.nn.mlp import MODULE_ACTIVATIONS, module_mlp

__all__ = [
    "BACKBONES",
    "ClassGaussianEncoder",
    "check_labelled_batch",
    "FeatureExtractor",
    "class_means",
    "encode_sets",
    "infer_num_classes",
    "check_versa_targets",
    "versa_loss",
]

BACKBONES = ("conv4", "mlp")
_CACHE_SIZE = 4


def _pos_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class FeatureExtractor(nn.Module):
    """Shared feature map ``h(x)``: ``[..., N, D] -> [..., N, F]`` (Conv-4 or MLP, optional projection).

    Parameters
    ----------
    backbone : "conv4" | "mlp"
        Conv-4 on flattened images (``image_shape`` needed) or an MLP on vectors (``x_dim`` needed).
    image_shape : (C, H, W), optional
        Shape of one image for ``"conv4"`` (``H, W >= 16``); inputs are ``C*H*W`` long.
    x_dim : int, optional
        Input size for ``"mlp"``.
    channels : int
        Channels of every Conv-4 block (64 in the standard network; a 28x28 image then gives 64 features).
    hidden : sequence of int
        Widths of the MLP's layers (each followed by the activation).
    feature_dim : int, optional
        Project the backbone's output linearly to this size ``F`` (no activation after it); None: keep it.
    activation : "relu" | "gelu" | "silu" | "tanh"
        Nonlinearity of the MLP.
    test_shifts : int
        ``"conv4"`` only: in eval mode an image's features are the mean of the network's features over its
        ``(2r+1)^2`` copies translated by ``-r .. r`` pixels in each direction (zero-filled), ``r = test_shifts``:
        ``h(x) = mean_{dy, dx} f(shift(x, dy, dx))``, the feature map averaged over the translations that
        ``Episodes(shift=r)`` draws while training (test-time augmentation). 0 (default): ``h = f``. Training
        mode always runs ``f`` once. A plain attribute: set ``model.features.test_shifts`` on a trained model.
    """

    def __init__(
        self,
        backbone: str = "conv4",
        image_shape: Optional[Sequence[int]] = None,
        x_dim: Optional[int] = None,
        channels: int = 64,
        hidden: Union[int, Sequence[int]] = (64, 64),
        feature_dim: Optional[int] = None,
        activation: str = "relu",
        test_shifts: int = 0,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if isinstance(test_shifts, bool) or not isinstance(test_shifts, int) or test_shifts < 0:
            raise ValueError(f"test_shifts must be an int >= 0 (pixels), got {test_shifts!r}")
        if test_shifts and backbone != "conv4":
            raise ValueError(f"test_shifts translates images: it needs backbone='conv4', got {backbone!r}")
        self.backbone = backbone
        if backbone == "conv4":
            shape = tuple(image_shape) if isinstance(image_shape, (tuple, list, torch.Size)) else None
            if shape is None or len(shape) != 3 or not all(_pos_int(s) for s in shape):
                raise ValueError(
                    f"image_shape must be three positive ints (C, H, W) for backbone='conv4', got {image_shape!r}"
                )
            if shape[1] < 16 or shape[2] < 16:
                raise ValueError(f"image_shape: H and W must be at least 16 (four 2x2 pools), got {shape!r}")
            if test_shifts >= min(shape[1:]):
                raise ValueError(f"test_shifts = {test_shifts} must be smaller than the image size {shape[1:]}")
            if not _pos_int(channels):
                raise ValueError(f"channels must be a positive int, got {channels!r}")
            layers: List[nn.Module] = []
            c_in, H, W = shape
            for _ in range(4):
                layers += [
                    nn.Conv2d(c_in, channels, 3, padding=1),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                ]
                c_in, H, W = channels, H // 2, W // 2
            # channels-last memory: measured 1.5x faster forward + backward on one CPU thread (oneDNN)
            self.net = nn.Sequential(*layers, nn.Flatten()).to(memory_format=torch.channels_last)
            self.image_shape: Optional[Tuple[int, int, int]] = shape
            self.in_features = math.prod(shape)
            out = channels * H * W
        else:
            if not _pos_int(x_dim):
                raise ValueError(f"x_dim must be a positive int for backbone='mlp', got {x_dim!r}")
            widths = [hidden] if _pos_int(hidden) else list(hidden)
            if not widths or not all(_pos_int(w) for w in widths):
                raise ValueError(f"hidden must be a positive int or a non-empty sequence of them, got {hidden!r}")
            if activation not in MODULE_ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(MODULE_ACTIVATIONS)}, got {activation!r}")
            self.net = nn.Sequential(module_mlp([x_dim] + widths, activation), MODULE_ACTIVATIONS[activation]())
            self.image_shape = None
            self.in_features = x_dim
            out = widths[-1]
        if feature_dim is not None and not _pos_int(feature_dim):
            raise ValueError(f"feature_dim must be a positive int or None, got {feature_dim!r}")
        self.projection = nn.Linear(out, feature_dim) if feature_dim is not None else None
        self.feature_dim = feature_dim if feature_dim is not None else out
        self.test_shifts = test_shifts
        self._recent: List[tuple] = []
        self._memo: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple]] = None

    # ------------------------------------------------------------------ evaluation
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on rows ``x [M, D] -> [M, F]`` (in eval mode averaged over ``test_shifts`` translations)."""
        if x.shape[0] == 0:
            return x.new_zeros(0, self.feature_dim)
        if self.image_shape is None:
            h = self.net(x)
        elif self.test_shifts and not self.training:
            r = self.test_shifts
            img = x.reshape((-1,) + self.image_shape)
            H, W = self.image_shape[1:]
            pad = nn.functional.pad(img, (r, r, r, r))
            h = torch.stack(
                [
                    self.net(pad[..., i : i + H, j : j + W].contiguous(memory_format=torch.channels_last))
                    for i in range(2 * r + 1)
                    for j in range(2 * r + 1)
                ]
            ).mean(0)
        else:
            h = self.net(x.reshape((-1,) + self.image_shape).contiguous(memory_format=torch.channels_last))
        return self.projection(h) if self.projection is not None else h

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features ``[..., N, F]`` of points ``x [..., N, D]``; ``mask [..., N]`` (True = real) leaves padding at 0."""
        if (
            not isinstance(x, torch.Tensor)
            or not x.is_floating_point()
            or x.dim() < 2
            or x.shape[-1] != self.in_features
        ):
            raise ValueError(
                f"x must be a floating tensor [..., N, {self.in_features}], got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:-1])):
            raise ValueError(
                f"mask must be a bool tensor {list(x.shape[:-1])} (the points of x), got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        cacheable = self._cacheable()
        if cacheable:
            version = self._weights_version() + (x._version,)
            for cx, cm, cv, out in self._recent:
                if cx() is x and (cm() if cm is not None else None) is mask and cv == version:
                    return out
        out = self._compute(x, mask)
        if cacheable:  # weak references: the cache never keeps a batch alive
            entry = (
                weakref.ref(x),
                None if mask is None else weakref.ref(mask),
                self._weights_version() + (x._version,),
                out,
            )
            self._recent = [entry] + [e for e in self._recent if e[0]() is not None][: _CACHE_SIZE - 1]
        return out

    def _compute(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        keep = None if mask is None or bool(mask.all()) else mask.reshape(-1)
        rows = flat if keep is None else flat[keep]
        # in eval mode a memoize table serves even with gradients on (a gradient-based guide's inner loop needs
        # them for its head, not for the frozen extractor): its features are constants; no table: None
        h = None if self.training else self._lookup(rows)
        if h is None:
            h = self._run(rows)
        if keep is not None:
            full = h.new_zeros(flat.shape[0], self.feature_dim)
            full[keep] = h
            h = full
        return h.reshape(lead + (self.feature_dim,))

    # ------------------------------------------------------------------ caches
    def _cacheable(self) -> bool:
        """Eval mode and no gradient wanted for the weights: features are a fixed function of each point."""
        if self.training:
            return False
        return not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())

    def _weights_version(self) -> tuple:
        return (
            tuple(t._version for t in self.parameters())
            + tuple(b._version for b in self.buffers())
            + (tuple(id(t) for t in self.parameters()), self.test_shifts)
        )

    @contextlib.contextmanager
    def memoize(self, images: torch.Tensor, batch_size: int = 1024) -> Iterator[None]:
        """Within the block (eval mode, weights unchanged), serve the features of ``images [M, D]`` by lookup.

        The features of every row of ``images`` are computed once (``batch_size`` rows per pass); later
        inputs get the features of their rows that are rows of ``images`` by exact lookup, and the network
        runs only on the others. Results equal the network's up to the float rounding of a different batch
        composition. Useful to evaluate many episodes drawn from one image table. Served features carry no
        gradient to the extractor's weights, also when gradients are on (the block is for evaluation).
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 2 or images.shape[1] != self.in_features:
            raise ValueError(
                f"images must be a tensor [M, {self.in_features}], got "
                f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
            )
        was_training, previous = self.training, self._memo
        self.eval()
        try:
            with torch.no_grad():
                feats = torch.cat(
                    [self._run(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
                )
            g = torch.Generator().manual_seed(12345)
            proj = torch.randn(images.shape[1], generator=g, dtype=torch.float64)
            keys = images.double() @ proj
            order = torch.argsort(keys)
            self._memo = (keys[order], order, images, feats, self._weights_version())
            yield
        finally:
            self._memo = previous  # a nested block leaves the outer one's table in place
            self.train(was_training)

    def _lookup(self, rows: torch.Tensor) -> Optional[torch.Tensor]:
        """Features of ``rows [M, D]``: rows of the memo table by lookup, the others (e.g. padding) by the network;
        None if no row is there (or the weights changed)."""
        if self._memo is None or rows.shape[0] == 0:
            return None
        keys, order, table, feats, version = self._memo
        if version != self._weights_version():
            return None
        g = torch.Generator().manual_seed(12345)
        proj = torch.randn(rows.shape[1], generator=g, dtype=torch.float64)
        k = rows.detach().double() @ proj
        pos = torch.searchsorted(keys, k).clamp_max(keys.shape[0] - 1)
        idx = order[pos]
        hit = (table[idx].to(rows.dtype) == rows.detach()).all(-1)
        if not bool(hit.any()):
            return None
        out = feats[idx].to(rows.dtype)
        if not bool(hit.all()):
            out[~hit] = self._run(rows[~hit]).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        what = f"image_shape={self.image_shape}" if self.image_shape is not None else f"x_dim={self.in_features}"
        shifts = f", test_shifts={self.test_shifts}" if self.test_shifts else ""
        return f"backbone={self.backbone!r}, {what}, feature_dim={self.feature_dim}{shifts}"


def encode_sets(extractor: FeatureExtractor, batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features of a batch's context and target points: ``(h_context [T, Nc, F], h_target [T, Nt, F])``.

    In training mode both sets go through the extractor in one pass (its batch norm sees every image of the
    meta-batch, as a ProtoNet's support and queries); in eval mode each set on its own (features are then
    point-wise, so this is the same), which lets the extractor's identity cache serve repeated calls on the
    same tensors (e.g. every NUTS step on one context set).
    """
    nc, nt = batch.num_points("context"), batch.num_points("target")
    if extractor.training and nt > 0:
        h = extractor(
            torch.cat([batch.context_x, batch.target_x], 1), torch.cat([batch.context_mask, batch.target_mask], 1)
        )
        return h[:, :nc], h[:, nc:]
    hc = extractor(batch.context_x, batch.context_mask)
    if nt == 0:
        return hc, hc.new_zeros(batch.num_tasks, 0, extractor.feature_dim)
    return hc, extractor(batch.target_x, batch.target_mask)


def class_means(
    h: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, num_classes: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-class means of features: ``h [..., T, N, F]``, labels ``y [T, N]``, ``mask [T, N]`` -> ``([..., T, K, F], counts [T, K])``.

    ``mean_tk = sum_n m_tn 1[y_tn = k] h_tn / max(1, n_tk)`` with ``n_tk`` the class's real points (a class
    without a point gets a zero mean and count 0).
    """
    onehot = torch.nn.functional.one_hot(y.clamp(0, num_classes - 1), num_classes).to(h.dtype)
    onehot = onehot * mask[..., None].to(h.dtype)  # [T, N, K]
    counts = onehot.sum(-2)  # [T, K]
    sums = onehot.transpose(-1, -2) @ h  # [..., T, K, F]
    return sums / counts.clamp_min(1.0)[..., None], counts


def check_labelled_batch(model: nn.Module, batch) -> int:
    """``K`` of ``batch`` for a classifier with ``features`` and ``num_classes``; ``TypeError``/``ValueError`` unless
    the batch holds long class labels ``[T, N]`` below ``K`` and inputs of the extractor's size."""
    from pyro_meta.data.batch import SPLITS
    from pyro_meta.model import check_batch

    check_batch(batch)
    name = type(model).__name__
    if not batch.is_classification:
        raise ValueError(f"{name} classifies: batch y must be long class labels [T, N]")
    if batch.x_dim != model.features.in_features:
        raise ValueError(
            f"batch has Dx={batch.x_dim} but {name} was built for inputs of size "
            f"{model.features.in_features} (x_dim / image_shape)"
        )
    K = infer_num_classes(model.num_classes, batch)
    for split in SPLITS:
        y = batch.y(split)
        if y is not None and batch.num_points(split) and bool((y[batch.mask(split)] >= K).any()):
            raise ValueError(f"batch {split}_y has labels >= K = {K} (num_classes={model.num_classes})")
    return K


def infer_num_classes(num_classes: Optional[int], batch) -> int:
    """``num_classes`` if given, else the episode's way (``batch.info["way"]``) or the largest context label + 1."""
    if num_classes is not None:
        return num_classes
    way = batch.info.get("way")
    if isinstance(way, int) and not isinstance(way, bool) and way >= 2:
        return way
    y, m = batch.context_y, batch.context_mask
    if not bool(m.any()):
        raise ValueError("cannot tell the number of classes: the context has no point and num_classes is None")
    return max(2, int(y[m].max()) + 1)


class ClassGaussianEncoder(nn.Module):
    """Per-class amortized Gaussian ``q(v_tk | class k's points) = N(m_tk, diag(s_tk^2))`` (VERSA-style).

    Each class's real points are summarised by their mean feature ``e_tk [F]`` and count ``n_tk`` (the
    mean is permutation invariant and ignores padding); the inputs ``u = [e_tk, ||e_tk||^2, log(1 + n_tk)]``
    go through an MLP plus a linear skip, ``(a, b) = MLP(u) + L u``, and ``m = loc0 + a``,
    ``s = min_scale + softplus(b + scale0)`` (``loc0`` / ``scale0`` optional offsets, e.g. a prior's). The
    linear skip represents the prototype classifier ``w_k = [2 e_k, -||e_k||^2]`` exactly. The same
    networks serve every class, so the guide works for any number of classes.

    Initialisation: the MLP's last layer is zero, so the guide starts at its linear skip; with
    ``prototype_init=True`` (``out_dim = F + 1``) that skip is the prototype classifier, ``m_k = loc0 + [2 e_k,
    -||e_k||^2]`` (the linear head equal to a ProtoNet on the same features, as Proto-MAML's head), otherwise
    ``m_k = loc0``; the scale starts at ``init_scale`` (``scale0`` = None).

    Parameters
    ----------
    feature_dim : int
        ``F``.
    out_dim : int
        Size of each class's latent.
    hidden : int
        Width of the MLP's two hidden layers.
    min_scale : float
        Lower bound of ``s``.
    prototype_init : bool
        Start at the prototype classifier (needs ``out_dim = feature_dim + 1``).
    init_scale : float
        The scale ``s`` at initialisation (without ``scale0``).
    """

    def __init__(
        self,
        feature_dim: int,
        out_dim: int,
        hidden: int = 64,
        min_scale: float = 1e-3,
        prototype_init: bool = False,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("out_dim", out_dim), ("hidden", hidden)):
            if not _pos_int(value):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if prototype_init and out_dim != feature_dim + 1:
            raise ValueError(f"prototype_init needs out_dim = feature_dim + 1, got {out_dim} and {feature_dim}")
        if not min_scale < init_scale:
            raise ValueError(f"init_scale must exceed min_scale ({min_scale}), got {init_scale}")
        self.out_dim, self.min_scale = out_dim, float(min_scale)
        self.mlp = module_mlp([feature_dim + 2, hidden, hidden, 2 * out_dim], "relu")
        self.skip = nn.Linear(feature_dim + 2, 2 * out_dim)
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()
            self.skip.weight.zero_()
            self.skip.bias.zero_()
            self.skip.bias[out_dim:] = math.log(math.expm1(init_scale - min_scale))
            if prototype_init:
                self.skip.weight[:feature_dim, :feature_dim] = 2 * torch.eye(feature_dim)
                self.skip.weight[feature_dim, feature_dim] = -1.0

    def forward(
        self,
        means: torch.Tensor,
        counts: torch.Tensor,
        loc0: Optional[torch.Tensor] = None,
        raw_scale0: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loc [T, K, D], scale [T, K, D])`` from class means ``[T, K, F]`` and counts ``[T, K]``."""
        u = torch.cat(
            [means, (means * means).sum(-1, keepdim=True), torch.log1p(counts)[..., None].to(means.dtype)], -1
        )
        a, b = (self.mlp(u) + self.skip(u)).chunk(2, -1)
        loc = a if loc0 is None else loc0 + a
        raw = b if raw_scale0 is None else raw_scale0 + b
        return loc, self.min_scale + torch.nn.functional.softplus(raw)


def versa_loss(log_probs: torch.Tensor, batch) -> torch.Tensor:
    """VERSA's predictive loss (ML-PIP): ``mean_t -mean_{n in target} log (1/L) sum_l p(y_tn | w_l)``.

    ``log_probs [L, T, Nt]``: each draw's log-likelihood of each target label; padded targets drop out.
    """
    lp = torch.logsumexp(log_probs, 0) - math.log(log_probs.shape[0])
    m = batch.target_mask.to(lp.dtype)
    return -((lp * m).sum(-1) / m.sum(-1).clamp_min(1)).mean()


def check_versa_targets(batch) -> None:
    """The VERSA objective scores the target labels: ``ValueError`` without any."""
    if batch.target_y is None or batch.num_points("target") == 0:
        raise ValueError("batch: the 'versa' objective needs observed target points (target_y)")
