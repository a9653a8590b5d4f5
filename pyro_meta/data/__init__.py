"""Task batches and task distributions; few-shot image classification data (Omniglot, image folders)."""

from .batch import TaskBatch
from .concat import concat_batches
from .episodes import Episodes
from .features import FourierFeatures, PolynomialFeatures
from .gp import BNPGPCurves, GPCurves
from .images import IMAGE_EXTENSIONS, read_image_folder, read_images, read_omniglot
from .labelled import LabelledImages
from .line_or_sine import LineOrSine
from .omniglot import OMNIGLOT_CITATION, OMNIGLOT_SPLITS, OmniglotEpisodes, load_omniglot
from .tasks import LinearTasks, Sinusoid, TaskDistribution

__all__ = [
    "BNPGPCurves",
    "Episodes",
    "FourierFeatures",
    "GPCurves",
    "IMAGE_EXTENSIONS",
    "LabelledImages",
    "LineOrSine",
    "LinearTasks",
    "OMNIGLOT_CITATION",
    "OMNIGLOT_SPLITS",
    "OmniglotEpisodes",
    "PolynomialFeatures",
    "Sinusoid",
    "TaskBatch",
    "TaskDistribution",
    "concat_batches",
    "load_omniglot",
    "read_image_folder",
    "read_images",
    "read_omniglot",
]
