"""Meta-training (``fit``) and posterior inference over task latents (``infer``)."""

from .fit import FitResult, fit
from .infer import METHODS, infer
from .method import InferenceMethod, InferenceResult, Option, available_methods, get_method, register_method
from .posterior import Posterior
from .predictive import PosteriorPredictive, Predictive

__all__ = [
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
]
