"""``plot_episode`` moved to :mod:`pyro_meta.plot_classification` (with ``plot_reliability``); re-exported here."""

from .plot_classification import plot_episode

__all__ = ["plot_episode"]
