"""Meta-training (``fit``) and posterior inference over task latents (``infer``)."""

from .batched_hmc import BatchedHMCResult, sample_batched_hmc
from .fit import FitResult, fit
from .infer import METHODS, infer
from .merge import merge_posteriors
from .method import InferenceMethod, InferenceResult, Option, available_methods, get_method, register_method
from .posterior import Posterior
from .predictive import PosteriorPredictive, Predictive
from .sharded import chunk_seed, infer_sharded, task_chunks

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
    "chunk_seed",
    "fit",
    "get_method",
    "infer",
    "infer_sharded",
    "merge_posteriors",
    "register_method",
    "sample_batched_hmc",
    "task_chunks",
]
