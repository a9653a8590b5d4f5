"""pyro_meta: Bayesian meta-learning as plain Pyro models and guides with task-level latents."""

from . import data, distributed, likelihoods, metrics, oracles
from .checkpoint import (
    CheckpointError,
    check_writable,
    load_checkpoint,
    read_checkpoint_meta,
    rebuild_model,
    save_checkpoint,
)
from .data import TaskBatch
from .evaluation import EvaluationTable, evaluate
from .inference import (
    METHODS,
    FitResult,
    InferenceMethod,
    InferenceResult,
    Option,
    Posterior,
    PosteriorPredictive,
    Predictive,
    available_methods,
    fit,
    get_method,
    infer,
    infer_sharded,
    merge_posteriors,
    register_method,
)
from .model import MetaModel, local_params, observe, point_plate, task_latent_sites, task_plate
from .oracles import GPOracle, LineOrSineOracle, Oracle, SinusoidOracle

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EvaluationTable",
    "FitResult",
    "GPOracle",
    "InferenceMethod",
    "InferenceResult",
    "LineOrSineOracle",
    "METHODS",
    "MetaModel",
    "Option",
    "Oracle",
    "Posterior",
    "PosteriorPredictive",
    "Predictive",
    "SinusoidOracle",
    "TaskBatch",
    "available_methods",
    "check_writable",
    "data",
    "distributed",
    "evaluate",
    "fit",
    "get_method",
    "infer",
    "infer_sharded",
    "likelihoods",
    "load_checkpoint",
    "local_params",
    "merge_posteriors",
    "metrics",
    "observe",
    "oracles",
    "point_plate",
    "read_checkpoint_meta",
    "rebuild_model",
    "register_method",
    "save_checkpoint",
    "task_latent_sites",
    "task_plate",
]
