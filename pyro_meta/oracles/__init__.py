"""Oracles: the best predictive any meta-learner could reach on a task family.

Each oracle knows the task family's true generative process and returns the Bayes-optimal
posterior predictive ``p(y* | x*, context)`` at a batch's targets (context points are masked):

- :class:`GPOracle`: the exact GP predictive with each task's true hyperparameters (``GPCurves``).
- :class:`SinusoidOracle`: noisy sinusoids (``Sinusoid`` with ``noise_std > 0``), by numerical
  integration over (amplitude, phase).
- :class:`LineOrSineOracle`: ``LineOrSine``, integrating over both hypotheses and their parameters.

All computation is in float64; results come back in the batch's dtype.

Any object with ``predict``, ``log_prob`` and ``sample`` is an :class:`Oracle` for
:func:`pyro_meta.evaluate`. Modules: :mod:`.base` (the protocol), :mod:`.gp`, :mod:`.quadrature` (the grid
engine and its two families), :mod:`.truncnorm` (the truncated-normal numerics it needs).
"""

from .base import Oracle, check_oracle
from .gp import GPOracle
from .quadrature import LineOrSineOracle, SinusoidOracle

__all__ = ["GPOracle", "LineOrSineOracle", "Oracle", "SinusoidOracle", "check_oracle"]
