"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .abml import ABML
from .attentive_np import AttentiveNP
from .bayesian_last_layer import BayesianLastLayer
from .bayesian_linear import BayesianLinear
from .bmaml import BMAML
from .conditional_np import ConditionalNP
from .maml import MAML
from .meta_sgd import MetaSGD
from .mixture_platipus import MixturePLATIPUS
from .neural_process import NeuralProcess
from .np_classifier import NeuralProcessClassifier
from .platipus import PLATIPUS
from .protonet import ProtoNet
from .transformer_np import TransformerNP

__all__ = [
    "ABML",
    "AttentiveNP",
    "BMAML",
    "BayesianLastLayer",
    "BayesianLinear",
    "ConditionalNP",
    "MAML",
    "MetaSGD",
    "MixturePLATIPUS",
    "NeuralProcess",
    "NeuralProcessClassifier",
    "PLATIPUS",
    "ProtoNet",
    "TransformerNP",
]
