"""From a checked configuration to objects: the model, the tasks (a task family or a CSV file), the oracle.

This is the one place of ``pyro_meta`` that imports the zoo (``pyro_meta.models``), lazily, inside
:func:`zoo_models`: the library never depends on the zoo.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..data.batch import TaskBatch
from .config import ConfigError

__all__ = [
    "TASK_FAMILIES",
    "ORACLES",
    "build_model",
    "build_oracle",
    "build_tasks",
    "model_class",
    "read_table",
    "zoo_models",
]

#: task families a config may name in [tasks] (all of pyro_meta.data)
TASK_FAMILIES = ("GPCurves", "LineOrSine", "LinearTasks", "OmniglotEpisodes", "Sinusoid")
#: oracles a config may name in evaluate.oracle, and how each is built from the task family
ORACLES = ("GPOracle", "LineOrSineOracle", "SinusoidOracle")
#: packages whose classes a config or a checkpoint may name without --allow-module
TRUSTED = ("pyro_meta",)


def zoo_models() -> Dict[str, type]:
    """The zoo's models by name (imports ``pyro_meta.models``)."""
    from .. import models

    return {name: getattr(models, name) for name in models.__all__}


def model_class(name: str, allow: Sequence[str] = ()) -> type:
    """The class a config's ``model.name`` names: a zoo model, or ``package.module:Class``.

    ``package.module:Class`` is imported only when its top-level package is ``pyro_meta`` or in
    ``allow`` (``--allow-module``): importing a module runs its code.
    """
    from ..model import MetaModel

    if ":" not in name:
        zoo = zoo_models()
        if name not in zoo:
            raise ConfigError(
                f"model.name: unknown model {name!r} (zoo models: {', '.join(sorted(zoo))}; "
                "or 'package.module:Class' for your own)"
            )
        return zoo[name]
    module, _, qualname = name.partition(":")
    top = module.split(".")[0]
    if not module or not qualname:
        raise ConfigError(f"model.name: {name!r} is not 'package.module:Class'")
    if top not in (*TRUSTED, *allow):
        raise ConfigError(f"model.name: module {module!r} is not allowed; pass --allow-module {top} if you trust it")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model.name: cannot import {name!r}: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, MetaModel)):
        raise ConfigError(f"model.name: {name!r} is not a pyro_meta.MetaModel class")
    return obj


def _construct(cls: type, args: Mapping[str, Any], key: str) -> Any:
    """``cls(**args)`` with argument problems reported as ``ConfigError`` naming ``key``."""
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        unknown = sorted(set(args).difference(signature.parameters))
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}: unknown argument of {cls.__name__} (arguments: {', '.join(signature.parameters)})"
            )
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{key}: {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())}) failed: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def build_model(config: Mapping[str, Any], allow: Sequence[str] = ()) -> Any:
    """The configured model, freshly initialised (seed it before)."""
    spec = config["model"]
    return _construct(model_class(spec["name"], allow), spec.get("args", {}), "model.args")


# ------------------------------------------------------------------------------------- tasks
def read_table(path: str, key: str):
    """A CSV file as a ``pandas.DataFrame`` (``ConfigError`` naming ``key`` when it cannot be read)."""
    import pandas as pd

    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file {path!r}") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        raise ConfigError(f"{key}: cannot read {path!r} as CSV: {str(e).splitlines()[0]}") from None


def table_batch(frame: Any, data: Mapping[str, Any], key: str) -> TaskBatch:
    """A ``TaskBatch`` from a table by the ``[data]`` columns and split rule (``TaskBatch.from_table``)."""
    y = data["y"][0] if len(data["y"]) == 1 else list(data["y"])
    rule = {k: data[k] for k in ("split", "num_context", "context_fraction") if k in data}
    try:
        return TaskBatch.from_table(
            frame,
            task=data["task"],
            x=list(data["x"]),
            y=y,
            seed=data.get("seed", 0),
            dtype=torch.get_default_dtype(),
            **rule,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None


def build_tasks(config: Mapping[str, Any], which: str = "train") -> Any:
    """A task distribution (``[tasks]``) or a fixed ``TaskBatch`` (``[data]``; ``eval_path`` for evaluation).

    ``which="evaluate"`` takes ``[evaluate.tasks]`` when the configuration has one (e.g. the meta-test split).
    """
    if "tasks" in config:
        from .. import data as data_module

        spec, key = config["tasks"], "tasks"
        if which == "evaluate" and "tasks" in config.get("evaluate", {}):
            spec, key = config["evaluate"]["tasks"], "evaluate.tasks"
        name = spec["name"]
        if name not in TASK_FAMILIES:
            raise ConfigError(f"{key}.name: unknown task family {name!r} (families: {', '.join(TASK_FAMILIES)})")
        return _construct(getattr(data_module, name), spec.get("args", {}), f"{key}.args")
    data = config["data"]
    key = "data.eval_path" if which == "evaluate" and "eval_path" in data else "data.path"
    return table_batch(read_table(data[key.split(".")[1]], key), data, key)


def build_oracle(name: Optional[str], tasks: Any) -> Any:
    """The oracle ``evaluate.oracle`` names, for the task family ``tasks`` (None: no oracle)."""
    if name is None or name == "none":
        return None
    if name not in ORACLES:
        raise ConfigError(f"evaluate.oracle: unknown oracle {name!r} (oracles: {', '.join(ORACLES)}, or 'none')")
    if isinstance(tasks, TaskBatch):
        raise ConfigError(f"evaluate.oracle: {name} needs a task family ([tasks]); a data file has no known truth")
    import pyro_meta

    cls = getattr(pyro_meta, name)
    try:
        return cls() if name == "GPOracle" else cls(tasks)
    except TypeError as e:
        raise ConfigError(f"evaluate.oracle: {e}") from None


def describe(config: Mapping[str, Any], which: str = "train") -> Tuple[str, str]:
    """``(model, tasks)`` in words, for the console (``which="evaluate"``: the evaluation data file)."""
    spec = config["model"]
    args = ", ".join(f"{k}={v!r}" for k, v in spec.get("args", {}).items())
    if "tasks" in config:
        t = config["tasks"]
        if which == "evaluate" and "tasks" in config.get("evaluate", {}):
            t = config["evaluate"]["tasks"]
        targs = ", ".join(f"{k}={v!r}" for k, v in t.get("args", {}).items())
        return f"{spec['name']}({args})", f"{t['name']}({targs})"
    data = config["data"]
    path = data["eval_path"] if which == "evaluate" and "eval_path" in data else data["path"]
    return f"{spec['name']}({args})", f"the tasks of {path}"
