"""Meta-training (``fit``) and posterior inference over task latents (``infer``)."""

from .fit import FitResult, fit
from .infer import METHODS, infer
from .posterior import Posterior
from .predictive import Predictive

__all__ = ["FitResult", "METHODS", "Posterior", "Predictive", "fit", "infer"]
