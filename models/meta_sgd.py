"""``MetaSGD``: MAML with a meta-learned step size per weight (Li, Zhou, Chen & Li 2017).

The model and the point-mass guide are :class:`~pyro_meta.models.MAML`'s; only the inner step changes,
``phi_t = theta - alpha ⊙ grad L_ctx(theta)`` with ``alpha [P]`` meta-learned (positive, log-parametrised)
jointly with ``theta``: the step direction and size are learned, so one inner step goes further than MAML's.
The whole model is its constructor: a fifth gradient-based model costs what differs from the base class.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .maml import MAML

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """MAML whose inner step size ``alpha [P]`` is a meta-learned vector (one per adapted weight).

    Parameters
    ----------
    inner_lr : float
        Initial value of every ``alpha_p`` (Meta-SGD initialises them uniformly; 0.01 on sinusoids).
    inner_steps, eval_inner_steps : int
        Inner steps at meta-training and test time (1 and 1 in the paper).
    **kwargs
        Every other option of :class:`~pyro_meta.models.MAML` and its base (``likelihood``, ``net``, ``adapt``...).
    """

    def __init__(
        self,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: Sequence[int] = (40, 40),
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: Optional[int] = None,
        **kwargs,
    ) -> None:
        if "learn_inner_lr" in kwargs:
            raise TypeError("MetaSGD always meta-learns its inner step sizes: drop learn_inner_lr")
        super().__init__(
            x_dim=x_dim,
            y_dim=y_dim,
            hidden=hidden,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            **kwargs,
        )
        del self.log_inner_lr  # MAML's scalar buffer -> one learned step size per weight
        self._register_positive("log_inner_lr", inner_lr, "inner_lr", True, shape=(self.num_params,))
