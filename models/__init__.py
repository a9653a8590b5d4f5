"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .bayesian_linear import BayesianLinear
from .maml import MAML
from .neural_process import NeuralProcess

__all__ = ["BayesianLinear", "MAML", "NeuralProcess"]
