"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .abml import ABML
from .attentive_np import AttentiveNP
from .bayesian_linear import BayesianLinear
from .bmaml import BMAML
from .conditional_np import ConditionalNP
from .maml import MAML
from .neural_process import NeuralProcess
from .platipus import PLATIPUS
from .transformer_np import TransformerNP

__all__ = [
    "ABML", "AttentiveNP", "BMAML", "BayesianLinear", "ConditionalNP", "MAML", "NeuralProcess", "PLATIPUS",
    "TransformerNP",
]
