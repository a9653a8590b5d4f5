"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .abml import ABML
from .bayesian_last_layer import BayesianLastLayer
from .bayesian_linear import BayesianLinear
from .bmaml import BMAML
from .maml import MAML
from .mixture_platipus import MixturePLATIPUS
from .neural_process import NeuralProcess
from .np_classifier import NeuralProcessClassifier
from .platipus import PLATIPUS
from .protonet import ProtoNet

__all__ = ["ABML", "BMAML", "BayesianLastLayer", "BayesianLinear", "MAML", "MixturePLATIPUS", "NeuralProcess",
           "NeuralProcessClassifier", "PLATIPUS", "ProtoNet"]
