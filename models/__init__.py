"""The meta-learner zoo, installed as ``pyro_meta.models``."""

from .bayesian_linear import BayesianLinear

__all__ = sorted(["BayesianLinear"])
