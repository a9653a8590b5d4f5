"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .abml import ABML
from .bayesian_linear import BayesianLinear
from .maml import MAML
from .neural_process import NeuralProcess
from .platipus import PLATIPUS

__all__ = ["ABML", "BayesianLinear", "MAML", "NeuralProcess", "PLATIPUS"]
