"""``FunctionalConv4``: the few-shot Conv-4 image backbone with weights as one flat tensor per task (and particle).

The standard backbone of few-shot image classification (Vinyals et al. 2016; the Omniglot and
miniImageNet network of MAML, Finn et al. 2017): four blocks of ``3x3 conv (padding 1) ->
normalisation -> ReLU -> 2x2 max-pool``, 64 channels each, then optionally a linear head to class
logits. A 28x28x1 Omniglot image leaves ``64 x 1 x 1 = 64`` features after four pools
(28 -> 14 -> 7 -> 3 -> 1), an 84x84x3 miniImageNet image ``64 x 5 x 5 = 1600``.

As :class:`~pyro_meta.nn.FunctionalMLP`, the module has no parameters: its weights are an argument
``phi [..., T, P]`` with leading task and draw/particle dims. Every copy is evaluated at once: the
copies ``B = prod(...) * T`` are folded into the channel dim and each conv is one grouped
convolution (``conv2d(..., groups=B)``). Measured on 1 CPU thread (``benchmarks/conv4_speed.py``;
T = 25 tasks, 28x28 images, 64 channels, batch norm): ``torch.func.vmap`` of the per-task network took
1.2-1.7x the time of the grouped convolution (forward + backward and second-order steps, 5 and 25
images per task) and 1.4x on a MAML meta-step (5-way 1-shot, 15 queries per class). A Python loop over
tasks was 1.7x slower at 5 images per task, but faster on large sets (0.66x the time of a second-order
step at 25 images, 0.85x on the MAML meta-step): one task's activations stay in the CPU cache.

Normalisation never mixes tasks or particles (each copy has its own channels):

* ``norm="batch"`` (MAML's choice): batch norm in training mode, statistics per channel over the
  images of *one task in the current call* (and their pixels), learned scale and shift, no running
  statistics (train and eval mode compute the same). Consequences: a target image's features depend
  on the other images passed with it (predict a task's targets in one call, or use
  ``"instance"`` for point-wise predictions); statistics over a task's context and target images
  together are transductive (they use the target inputs, never their labels), as in MAML's code at
  test time; a Pyro model whose likelihood is evaluated on the context and the target sets
  separately normalises each set with its own statistics (the likelihood is then a product over a
  set's labels given all of its images); with one image the statistics are that image's, as instance
  norm. Pass ``mask`` so that padded images do not enter the statistics.
* ``norm="instance"``: statistics per image and channel over its pixels, learned scale and shift;
  point-wise, not transductive.
* ``norm="none"``: no normalisation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .masking import _check_mask, _check_points
from .mlp import FunctionalMLP

__all__ = ["FunctionalConv4"]

NORMS = ("batch", "instance", "none")
_EPS = 1e-5  # as torch.nn.BatchNorm2d / InstanceNorm2d


class FunctionalConv4(nn.Module):
    """Conv-4 backbone (and optional linear head) ``f(x; phi)`` for a flat weight tensor ``phi``.

    Block ``l = 1..4``: ``h -> relu(maxpool_2x2(norm(conv_3x3(h; W_l, b_l); gamma_l, beta_l)))``
    (pooling before the ReLU equals pooling after it, at a quarter of the cost); the head is
    ``logits = h @ W_head + b_head``. ``phi [..., P]`` stores, in this order, for each block
    ``conv{l}.weight [C_l, C_{l-1}, 3, 3]`` (``nn.Conv2d`` layout), ``conv{l}.bias [C_l]`` and, unless
    ``norm="none"``, ``norm{l}.weight [C_l]``, ``norm{l}.bias [C_l]``; then ``head.weight [F, K]``
    (``x @ W`` layout, as :class:`~pyro_meta.nn.FunctionalMLP`) and ``head.bias [K]``. The backbone's
    ``num_feature_params`` numbers come first, so ``phi[..., :num_feature_params]`` is the backbone
    and the rest the head (:meth:`split`).

    Parameters
    ----------
    image_shape : (C, H, W)
        Shape of one image; inputs are flattened ``[..., T, N, C*H*W]`` (``H, W >= 16``).
    channels : int or sequence of 4 ints
        Output channels of each block (64 in the standard network).
    num_classes : int, optional
        Size ``K`` of the linear head; ``None`` for the backbone alone (``forward`` returns features).
    norm : "batch" | "instance" | "none"
        Normalisation after each convolution (module docstring: batch norm is transductive and per call).

    Examples
    --------
    >>> net = FunctionalConv4((1, 28, 28), num_classes=5)
    >>> phi = net.init_params(8)                                    # [T, P]
    >>> net(torch.rand(8, 10, 784), phi).shape                      # x [T, N, C*H*W] -> logits [T, N, K]
    torch.Size([8, 10, 5])
    >>> net.features(torch.rand(8, 10, 784), phi).shape             # [T, N, F]
    torch.Size([8, 10, 64])
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Union[int, Sequence[int]] = 64,
        num_classes: Optional[int] = None,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        image_shape = tuple(image_shape) if isinstance(image_shape, (tuple, list, torch.Size)) else image_shape
        if not isinstance(image_shape, tuple) or len(image_shape) != 3 or not all(_is_pos_int(s) for s in image_shape):
            raise ValueError(f"image_shape must be three positive ints (C, H, W), got {image_shape!r}")
        if image_shape[1] < 16 or image_shape[2] < 16:
            raise ValueError(f"image_shape: H and W must be at least 16 (four 2x2 pools), got {image_shape!r}")
        if _is_pos_int(channels):
            widths = (channels,) * 4
        else:
            widths = tuple(channels) if isinstance(channels, (tuple, list)) else ()
        if len(widths) != 4 or not all(_is_pos_int(c) for c in widths):
            raise ValueError(f"channels must be a positive int or four of them, got {channels!r}")
        if num_classes is not None and not _is_pos_int(num_classes):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.image_shape = image_shape
        self.channels = widths
        self.norm = norm
        self.num_classes = num_classes
        C, H, W = image_shape
        for _ in range(4):
            H, W = H // 2, W // 2
        self.feature_dim = widths[-1] * H * W
        self._shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
        for i, (c_in, c_out) in enumerate(zip((C,) + widths[:-1], widths), start=1):
            self._shapes[f"conv{i}.weight"] = (c_out, c_in, 3, 3)
            self._shapes[f"conv{i}.bias"] = (c_out,)
            if norm != "none":
                self._shapes[f"norm{i}.weight"] = (c_out,)
                self._shapes[f"norm{i}.bias"] = (c_out,)
        self.num_feature_params = sum(math.prod(s) for s in self._shapes.values())
        self.head_net = None if num_classes is None else FunctionalMLP((self.feature_dim, num_classes))
        self.num_head_params = 0 if self.head_net is None else self.head_net.num_params
        if self.head_net is not None:
            self._shapes["head.weight"] = (self.feature_dim, num_classes)
            self._shapes["head.bias"] = (num_classes,)
        self.num_params = self.num_feature_params + self.num_head_params

    @property
    def in_features(self) -> int:
        """``C * H * W``, the size of one flattened image."""
        return math.prod(self.image_shape)

    # ------------------------------------------------------------------ flat weights
    def init_params(self, num: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A flat weight vector ``[P]`` (or ``num`` independent ones, ``[num, P]``).

        ``nn.Conv2d``/``nn.Linear``'s default (Kaiming-uniform, ``a = sqrt(5)``): weights and biases
        ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; norm scale 1 and shift 0, as ``nn.BatchNorm2d``.
        """
        lead = () if num is None else (int(num),)
        parts = []
        for name, shape in self._shapes.items():
            if name.startswith("head."):
                continue
            size = lead + (math.prod(shape),)
            if name.startswith("norm"):
                parts.append(torch.ones(size) if name.endswith("weight") else torch.zeros(size))
            else:
                layer = name.split(".")[0]
                bound = 1.0 / math.sqrt(math.prod(self._shapes[layer + ".weight"][1:]))
                parts.append((torch.rand(size, generator=generator) * 2 - 1) * bound)
        if self.head_net is not None:
            parts.append(self.head_net.init_params(num, generator))
        return torch.cat(parts, -1)

    def unflatten(self, phi: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``phi [..., P]`` (or the backbone's ``[..., num_feature_params]``) -> ``{name: [..., *shape]}`` (views).

        Names as in the class docstring: ``conv1.weight [..., C_1, C, 3, 3]``, ..., ``head.weight [..., F, K]``.
        """
        self._check_phi(phi, allow_features=True)
        names = list(self._shapes)
        if phi.shape[-1] != self.num_params:  # the backbone alone
            names = names[:-2]
        parts = phi.split([math.prod(self._shapes[n]) for n in names], -1)
        lead = phi.shape[:-1]
        return OrderedDict((n, p.reshape(lead + self._shapes[n])) for n, p in zip(names, parts))

    def flatten(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unflatten`: ``{name: [..., *shape]}`` -> ``[..., P]`` (leading dims broadcast).

        Every name of the class docstring must be present (the ``head.*`` ones may be left out together,
        giving the backbone's ``[..., num_feature_params]``).
        """
        names = list(self._shapes)
        if self.head_net is not None and "head.weight" not in params and "head.bias" not in params:
            names = names[:-2]
        if set(params) != set(names):
            raise ValueError(f"params must have the keys {names}, got {sorted(params)}")
        flat = []
        for n in names:
            p, shape = params[n], self._shapes[n]
            if not isinstance(p, torch.Tensor) or tuple(p.shape[p.dim() - len(shape) :]) != shape:
                raise ValueError(
                    f"params[{n!r}] must have shape [..., {', '.join(map(str, shape))}], got "
                    f"{tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__}"
                )
            flat.append(p.reshape(p.shape[: p.dim() - len(shape)] + (-1,)))
        lead = torch.broadcast_shapes(*(f.shape[:-1] for f in flat))
        return torch.cat([f.expand(lead + f.shape[-1:]) for f in flat], -1)

    def split(self, phi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``phi [..., P]`` -> ``(backbone [..., num_feature_params], head [..., num_head_params])``."""
        self._check_phi(phi)
        return phi[..., : self.num_feature_params], phi[..., self.num_feature_params :]

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: torch.Tensor, phi: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[..., T, N, K]`` (features ``[..., T, N, F]`` without a head) of images ``x [..., T, N, C*H*W]``.

        ``phi [..., T, P]``, the task-latent form ``[..., T, 1, P]``, or one shared ``[P]``; leading dims of
        ``x`` and ``phi`` (draws, particles) broadcast. ``mask [..., T, N]`` (True = real image) keeps padded
        images out of the batch-norm statistics.
        """
        if self.head_net is None:
            return self.features(x, phi, mask)
        _check_points(x, "x", self.in_features)
        phi = self._task_form(x, phi)
        phi_f, phi_h = self.split(phi)
        if phi_h.dim() == 1:
            phi_h = phi_h.expand(x.shape[-3], -1)
        return self.head(self.features(x, phi_f, mask), phi_h)

    def head(self, h: torch.Tensor, phi_head: torch.Tensor) -> torch.Tensor:
        """Linear head ``h @ W_head + b_head``: ``h [..., T, N, F]``, ``phi_head [..., T, Ph]`` -> ``[..., T, N, K]``.

        ``phi_head`` is ``phi[..., num_feature_params:]`` (also the task-latent form ``[..., T, 1, P_head]``),
        e.g. a task latent over the head alone on top of a meta-learned backbone.
        """
        if self.head_net is None:
            raise ValueError("head: this FunctionalConv4 has no head (num_classes=None)")
        return self.head_net(h, phi_head)

    def features(self, x: torch.Tensor, phi: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Backbone features ``[..., T, N, F]`` of images ``x [..., T, N, C*H*W]``.

        ``phi`` is the backbone ``[..., T, num_feature_params]`` or the whole ``[..., T, num_params]`` (the head
        is ignored), also in the task-latent form ``[..., T, 1, .]`` or shared by every task ``[.]``.
        ``mask [..., T, N]`` (True = real image) keeps padded images out of the batch-norm statistics.
        """
        _check_points(x, "x", self.in_features)
        phi = self._task_form(x, phi)
        self._check_phi(phi, allow_features=True)
        if phi.dtype != x.dtype:
            raise TypeError(f"phi and x must have the same dtype, got {phi.dtype} and {x.dtype}")
        phi = phi[..., : self.num_feature_params]
        N = x.shape[-2]
        lead = tuple(torch.broadcast_shapes(x.shape[:-2], phi.shape[:-1]))
        if mask is not None:
            _check_mask(mask, lead + (N,), "mask")
        if N == 0:
            return x.new_zeros(lead + (0, self.feature_dim))
        B = math.prod(lead)
        C, H, W = self.image_shape
        # [N, B*C, H, W]: copy b's channels are group b of every grouped conv
        h = x.expand(lead + x.shape[-2:]).reshape(B, N, C, H, W).transpose(0, 1).reshape(N, B * C, H, W)
        params = self.unflatten(phi.expand(lead + phi.shape[-1:]).reshape(B, -1))
        if mask is not None and (self.norm != "batch" or bool(mask.all())):
            mask = None  # torch's batch_norm: about twice as fast as the masked statistics
        m = None if mask is None else mask.expand(lead + (N,)).reshape(B, N).T
        for i in range(1, 5):
            weight = params[f"conv{i}.weight"]
            h = F.conv2d(
                h, weight.reshape((-1,) + weight.shape[2:]), params[f"conv{i}.bias"].reshape(-1), padding=1, groups=B
            )
            if self.norm != "none":
                h = self._normalise(h, params[f"norm{i}.weight"].reshape(-1), params[f"norm{i}.bias"].reshape(-1), m)
            h = torch.relu(F.max_pool2d(h, 2))
        return h.reshape(N, B, self.feature_dim).transpose(0, 1).reshape(lead + (N, self.feature_dim))

    def _normalise(
        self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Batch or instance norm of ``h [N, B*C, H, W]`` with scale/shift ``[B*C]``; ``mask [N, B]`` (batch norm)."""
        if self.norm == "instance":
            return F.instance_norm(h, weight=gamma, bias=beta, eps=_EPS)
        if mask is None:
            return F.batch_norm(h, None, None, weight=gamma, bias=beta, training=True, eps=_EPS)
        N, BC, Hh, Ww = h.shape
        B = mask.shape[1]
        hb = h.reshape(N, B, BC // B, Hh, Ww)
        m = mask.to(h.dtype)[:, :, None, None, None]
        count = (m.sum(0) * (Hh * Ww)).clamp_min(1.0)  # [B, 1, 1, 1]
        mean = (hb * m).sum((0, 3, 4), keepdim=True) / count
        var = (((hb - mean) ** 2) * m).sum((0, 3, 4), keepdim=True) / count
        hb = (hb - mean) * torch.rsqrt(var + _EPS)
        return hb.reshape(N, BC, Hh, Ww) * gamma[:, None, None] + beta[:, None, None]

    # ------------------------------------------------------------------ checks
    def _task_form(self, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """``[..., T, 1, P]`` (a task latent) -> ``[..., T, P]``, recognised as in :class:`FunctionalMLP`."""
        if isinstance(phi, torch.Tensor) and isinstance(x, torch.Tensor) and x.dim() >= 3:
            if phi.dim() >= 3 and phi.shape[-2] == 1 and phi.shape[-3] == x.shape[-3]:
                return phi.squeeze(-2)
        return phi

    def _check_phi(self, phi: torch.Tensor, allow_features: bool = False) -> None:
        sizes: List[int] = [self.num_params] + ([self.num_feature_params] if allow_features else [])
        if not isinstance(phi, torch.Tensor) or not phi.is_floating_point():
            raise TypeError(
                f"phi must be a floating tensor [..., T, {self.num_params}], got "
                f"{phi.dtype if isinstance(phi, torch.Tensor) else type(phi).__name__}"
            )
        if phi.dim() < 1 or phi.shape[-1] not in sizes:
            what = " or [..., num_feature_params]" if allow_features and self.num_head_params else ""
            raise ValueError(
                f"phi must have shape [..., T, {self.num_params}] (num_params){what} "
                f"with num_feature_params={self.num_feature_params}, got {tuple(phi.shape)}"
            )

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, channels={self.channels}, norm={self.norm!r}, "
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, num_params={self.num_params}"
        )


def _is_pos_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
