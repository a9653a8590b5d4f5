"""Task batches and task distributions."""

from .batch import TaskBatch
from .features import FourierFeatures, PolynomialFeatures
from .tasks import LinearTasks, Sinusoid, TaskDistribution

__all__ = sorted(
    [
        "FourierFeatures",
        "LinearTasks",
        "PolynomialFeatures",
        "Sinusoid",
        "TaskBatch",
        "TaskDistribution",
    ]
)
