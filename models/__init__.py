"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .abml import ABML
from .bayesian_linear import BayesianLinear
from .bmaml import BMAML
from .maml import MAML
from .mixture_platipus import MixturePLATIPUS
from .neural_process import NeuralProcess
from .platipus import PLATIPUS

__all__ = ["ABML", "BMAML", "BayesianLinear", "MAML", "MixturePLATIPUS", "NeuralProcess", "PLATIPUS"]
