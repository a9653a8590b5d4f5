"""Configuration files of the ``pyro-meta`` commands: TOML, checked against one schema.

A configuration is a TOML file (read with the standard library's ``tomllib``, Python 3.11+; the
``tomli`` backport on 3.10) with these tables; every key is optional unless marked::

    description = "free text"
    [model]                  name (required): a zoo model ("NeuralProcess") or "package.module:Class"
    [model.args]             the model's constructor arguments
    [tasks]                  name: a task family of pyro_meta.data ("Sinusoid", "GPCurves", ...)
    [tasks.args]             its constructor arguments
    [data]                   a CSV file instead of [tasks]: path (required), task, x, y, and one
                             split rule (split = column | num_context = k | context_fraction = f),
                             eval_path (tasks to evaluate on; default: path)
    [train]                  fit's arguments: num_steps, tasks_per_batch, num_context, num_target,
                             lr, lr_decay, optimizer, clip_norm, seed, checkpoint_every
    [evaluate]               methods, num_context, num_tasks, num_target, num_samples, oracle, seed
    [evaluate.options.NAME]  keyword arguments of infer for method NAME
    [reference]              a published number to print beside the measured one (presets)

Exactly one of ``[tasks]`` and ``[data]``. Any problem (unknown key, wrong type, value out of
range, missing file) raises :class:`ConfigError` whose message is one line naming the file and
the key.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..validation import check_int, check_number

__all__ = ["ConfigError", "SEED_LIMIT", "check_config", "list_presets", "load_config", "preset_path"]

SEED_LIMIT = 2**32
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")


class ConfigError(ValueError):
    """A configuration or command-line value is wrong; the message is one line naming the file and key."""


# ----------------------------------------------------------------------------------- checks
Check = Callable[[str, Any], Any]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _wrap(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Check:
    """A :mod:`pyro_meta.validation` check whose ``ValueError``/``TypeError`` becomes a ``ConfigError``."""

    def run(key: str, v: Any) -> Any:
        try:
            return check(key, v, *args, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None

    return run


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Check:
    """An int in ``[minimum, maximum]`` (bounds optional)."""
    return _wrap(check_int, minimum=minimum, maximum=maximum)


def number(minimum: Optional[float] = None, maximum: Optional[float] = None, open_min: bool = False) -> Check:
    """A finite float (ints accepted) in ``[minimum, maximum]`` (``(minimum, ...`` with ``open_min``)."""
    return _wrap(check_number, minimum=minimum, maximum=maximum, strict_min=open_min)


def string(choices: Optional[Tuple[str, ...]] = None) -> Check:
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key} must be a non-empty string, got {v!r} ({_type_name(v)})")
        if choices is not None and v not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {v!r}")
        return v

    return check


def strings(key: str, v: Any) -> List[str]:
    """A string or a non-empty list of strings -> list."""
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(s, str) and s for s in items):
        raise ConfigError(f"{key} must be a string or a non-empty list of strings, got {v!r}")
    return list(items)


def size_range(key: str, v: Any) -> Any:
    """A set size: a positive int or an inclusive ``[min, max]`` pair."""
    if _is_int(v) and v >= 1:
        return v
    if isinstance(v, list) and len(v) == 2 and all(_is_int(k) and k >= 0 for k in v) and v[0] <= v[1] and v[1] >= 1:
        return tuple(v)
    raise ConfigError(f"{key} must be a positive integer or a [min, max] pair of them, got {v!r}")


def sizes(key: str, v: Any) -> List[int]:
    """Context sizes: a positive int or a non-empty list of them."""
    items = [v] if _is_int(v) else v
    if not isinstance(items, list) or not items or not all(_is_int(k) and k >= 1 for k in items):
        raise ConfigError(f"{key} must be a positive integer or a non-empty list of them, got {v!r}")
    return list(items)


def table(key: str, v: Any) -> Dict[str, Any]:
    """A free-form table (constructor arguments), checked later by the code that uses it."""
    if not isinstance(v, dict):
        raise ConfigError(f"{key} must be a table ([{key}] or {{...}}), got {v!r}")
    return dict(v)


def tables(key: str, v: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(v, dict) or not all(isinstance(o, dict) for o in v.values()):
        raise ConfigError(f"{key} must be a table of tables ([{key}.METHOD]), got {v!r}")
    return {k: dict(o) for k, o in v.items()}


SEED = integer(0, SEED_LIMIT - 1)


def task_spec(key: str, v: Any) -> Dict[str, Any]:
    """A task family table ``{name = "...", args = {...}}`` (``[evaluate.tasks]``: the evaluation tasks)."""
    if not isinstance(v, dict):
        raise ConfigError(f"{key} must be a table ([{key}] with name and args), got {v!r}")
    unknown = sorted(set(v) - {"name", "args"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known in [{key}]: args, name)")
    if "name" not in v:
        raise ConfigError(f"{key}.name: missing (required in [{key}])")
    return {"name": string()(f"{key}.name", v["name"]), "args": table(f"{key}.args", v.get("args", {}))}


#: section -> key -> check; a section ``None`` is a top-level key
SCHEMA: Dict[str, Dict[str, Check]] = {
    "model": {"name": string(), "args": table},
    "tasks": {"name": string(), "args": table},
    "data": {
        "path": string(),
        "eval_path": string(),
        "task": string(),
        "x": strings,
        "y": strings,
        "split": string(),
        "num_context": integer(0),
        "context_fraction": number(0.0, 1.0, open_min=True),
        "seed": SEED,
    },
    "train": {
        "num_steps": integer(0),
        "tasks_per_batch": integer(1),
        "num_context": size_range,
        "num_target": size_range,
        "lr": number(0.0, open_min=True),
        "lr_decay": number(0.0, 1.0, open_min=True),
        "optimizer": string(OPTIMIZERS),
        "clip_norm": number(0.0, open_min=True),
        "seed": SEED,
        "checkpoint_every": integer(0),
    },
    "evaluate": {
        "methods": strings,
        "options": tables,
        "num_context": sizes,
        "num_tasks": integer(1),
        "num_target": integer(1),
        "num_samples": integer(1),
        "oracle": string(),
        "seed": SEED,
        "tasks": task_spec,
    },
    "reference": {
        "metric": string(),
        "value": number(),
        "method": string(),
        "num_context": integer(1),
        "source": string(),
        "note": string(),
    },
}
TOP_LEVEL = {"description": string()}
REQUIRED = {"model": ("name",), "tasks": ("name",), "data": ("path",), "reference": ("metric", "source")}
DATA_DEFAULTS = {"task": "task_id", "x": ["x"], "y": ["y"]}


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if source else key


def check_config(raw: Mapping[str, Any], source: str = "", base_dir: Optional[str] = None) -> Dict[str, Any]:
    """Validate a parsed configuration and return a normalised copy (data paths made absolute).

    ``source`` names the file in messages; relative ``data`` paths are taken from ``base_dir``
    (default: the current folder). Raises :class:`ConfigError` (one line) on the first problem.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(_where(source, f"a configuration must be a table, got {_type_name(raw)}"))
    out: Dict[str, Any] = {}
    try:
        for key, value in raw.items():
            if key in TOP_LEVEL:
                out[key] = TOP_LEVEL[key](key, value)
                continue
            if key not in SCHEMA:
                known = sorted([*SCHEMA, *TOP_LEVEL])
                raise ConfigError(f"{key}: unknown key (known top-level keys and tables: {', '.join(known)})")
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a table ([{key}]), got {value!r}")
            section = {}
            for k, v in value.items():
                if k not in SCHEMA[key]:
                    raise ConfigError(f"{key}.{k}: unknown key (known in [{key}]: {', '.join(sorted(SCHEMA[key]))})")
                section[k] = SCHEMA[key][k](f"{key}.{k}", v)
            for k in REQUIRED.get(key, ()):
                if k not in section:
                    raise ConfigError(f"{key}.{k}: missing (required in [{key}])")
            out[key] = section
        if "model" not in out:
            raise ConfigError("model: missing ([model] with name = a zoo model or 'package.module:Class')")
        if ("tasks" in out) == ("data" in out):
            raise ConfigError("tasks/data: give exactly one of [tasks] (a task family) and [data] (a CSV file)")
        if "data" in out:
            _check_data(out["data"], base_dir)
        if "tasks" in out.get("evaluate", {}) and "tasks" not in out:
            raise ConfigError("evaluate.tasks: only with [tasks] (a [data] file evaluates on data.eval_path)")
    except ConfigError as e:
        raise ConfigError(_where(source, str(e))) from None
    return out


def _check_data(data: Dict[str, Any], base_dir: Optional[str]) -> None:
    rules = [k for k in ("split", "num_context", "context_fraction") if k in data]
    if len(rules) > 1:
        raise ConfigError(f"data: give one split rule (split, num_context or context_fraction), got {rules}")
    for k, v in DATA_DEFAULTS.items():
        data.setdefault(k, copy.copy(v))
    if not rules:
        data["split"] = "split"
    for k in ("path", "eval_path"):
        if k in data:
            path = data[k] if os.path.isabs(data[k]) else os.path.join(base_dir or os.getcwd(), data[k])
            if not os.path.isfile(path):
                raise ConfigError(f"data.{k}: no such file {data[k]!r} (looked for {path})")
            data[k] = os.path.abspath(path)


# ----------------------------------------------------------------------------------- files
def _toml():
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(
                "reading TOML configs needs Python 3.11+ (tomllib) or the tomli package (pip install tomli)"
            ) from None
    return tomllib


def load_config(path: str) -> Dict[str, Any]:
    """Read and check a TOML configuration file (see the module docstring); ``ConfigError`` if bad."""
    tomllib = _toml()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text)") from None
    return check_config(raw, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def list_presets() -> Dict[str, str]:
    """Preset name -> its description, from the package's ``presets/*.toml``."""
    out = {}
    for name in sorted(os.listdir(PRESETS_DIR)):
        if name.endswith(".toml"):
            out[name[:-5]] = load_config(os.path.join(PRESETS_DIR, name)).get("description", "")
    return out


def preset_path(name: str) -> str:
    """The file of preset ``name``; ``ConfigError`` listing the presets when there is none."""
    path = os.path.join(PRESETS_DIR, f"{name}.toml")
    if os.path.sep in name or not os.path.isfile(path):
        names = sorted(n[:-5] for n in os.listdir(PRESETS_DIR) if n.endswith(".toml"))
        raise ConfigError(f"--preset: no preset named {name!r} (presets: {', '.join(names)})")
    return path
