"""The application layer: the ``pyro-meta`` commands, their TOML configurations and presets, the demo.

Layering: this is the only part of ``pyro_meta`` that may import the zoo (``pyro_meta.models``),
and it does so lazily, inside functions (``build.zoo_models``, ``demo.run_demo``); the library
(everything else under ``pyro_meta/``) never imports the zoo or this package.
``tests/test_layering.py`` checks both rules on the source.

* :mod:`~pyro_meta.apps.config` -- TOML files, their schema, :class:`ConfigError`, the presets;
* :mod:`~pyro_meta.apps.build` -- model, tasks and oracle from a configuration;
* :mod:`~pyro_meta.apps.commands` -- ``train``, ``evaluate``, ``predict``;
* :mod:`~pyro_meta.apps.demo` -- ``pyro-meta demo``.
"""

from .config import ConfigError, check_config, list_presets, load_config, preset_path
from .demo import DemoConfig, run_demo

__all__ = ["ConfigError", "DemoConfig", "check_config", "list_presets", "load_config", "preset_path", "run_demo"]
