"""Meta-training (``fit``) and posterior inference over task latents (``infer``)."""

from .batched_hmc import BatchedHMCResult, sample_batched_hmc
from .fit import FitResult, fit
from .infer import METHODS, infer
from .method import InferenceMethod, InferenceResult, Option, available_methods, get_method, register_method
from .posterior import Posterior
from .predictive import PosteriorPredictive, Predictive

__all__ = [
    "BatchedHMCResult",
    "FitResult",
    "InferenceMethod",
    "InferenceResult",
    "METHODS",
    "Option",
    "Posterior",
    "PosteriorPredictive",
    "Predictive",
    "available_methods",
    "fit",
    "get_method",
    "infer",
    "register_method",
    "sample_batched_hmc",
]
