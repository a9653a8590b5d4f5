"""The application layer: the ``pyro-meta`` commands, their TOML configurations and presets, the demos.

Layering: this is the only part of ``pyro_meta`` that may import the zoo (``pyro_meta.models``),
and it does so lazily, inside functions (``build.zoo_models``, ``demo.run_demo``,
``omniglot_demo.run_omniglot_demo``); the library (everything else under ``pyro_meta/``) never imports the
zoo or this package. ``tests/test_layering.py`` checks both rules on the source.

* :mod:`~pyro_meta.apps.config` -- TOML files, their schema, :class:`ConfigError`, the presets;
* :mod:`~pyro_meta.apps.build` -- model, tasks and oracle from a configuration;
* :mod:`~pyro_meta.apps.commands` -- ``train``, ``evaluate``, ``predict``;
* :mod:`~pyro_meta.apps.demo` -- ``pyro-meta demo``;
* :mod:`~pyro_meta.apps.omniglot_demo` -- few-shot classification on the shipped Omniglot alphabets:
  meta-train, then accuracy / NLL / calibration through :func:`pyro_meta.evaluate`, and figures.
"""

from .config import ConfigError, check_config, list_presets, load_config, preset_path
from .demo import DemoConfig, run_demo
from .omniglot_demo import OmniglotDemoConfig, omniglot_training_episodes, run_omniglot_demo

__all__ = [
    "ConfigError",
    "DemoConfig",
    "OmniglotDemoConfig",
    "check_config",
    "list_presets",
    "load_config",
    "omniglot_training_episodes",
    "preset_path",
    "run_demo",
    "run_omniglot_demo",
]
