"""Task batches and task distributions."""

from .batch import TaskBatch
from .features import FourierFeatures, PolynomialFeatures
from .gp import GPCurves
from .line_or_sine import LineOrSine
from .tasks import LinearTasks, Sinusoid, TaskDistribution

__all__ = [
    "FourierFeatures",
    "GPCurves",
    "LineOrSine",
    "LinearTasks",
    "PolynomialFeatures",
    "Sinusoid",
    "TaskBatch",
    "TaskDistribution",
]
