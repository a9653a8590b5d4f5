"""Meta-training (``fit``) and posterior inference over task latents (``infer``)."""

from .batched_hmc import BatchedHMCResult, sample_batched_hmc
from .fit import FitResult, fit
from .infer import METHODS, infer
from .posterior import Posterior
from .predictive import Predictive

__all__ = ["BatchedHMCResult", "FitResult", "METHODS", "Posterior", "Predictive", "fit", "infer", "sample_batched_hmc"]
