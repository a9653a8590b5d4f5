"""Applications built on the library and the zoo (the one layer allowed to import ``pyro_meta.models``).

* :mod:`pyro_meta.apps.omniglot_demo` -- few-shot classification on the shipped Omniglot alphabets:
  meta-train, then accuracy / NLL / calibration through :func:`pyro_meta.evaluate`, and figures.
"""

from .omniglot_demo import OmniglotDemoConfig, omniglot_training_episodes, run_omniglot_demo

__all__ = ["OmniglotDemoConfig", "omniglot_training_episodes", "run_omniglot_demo"]
