"""Checkpoints: atomic, checksummed, self-describing files of a model (and optimizer).

File format (version 1; integers little-endian)::

    offset   size  field
    0        16    magic  b"PYRO-META-CKPT\\n\\x00"
    16       32    SHA-256 of every byte from offset 48 to the end
    48       4     format version (uint32) = 1
    52       8     header length h (uint64)
    60       8     payload length p (uint64)
    68       h     header: UTF-8 JSON metadata (see below)
    68 + h   p     payload: torch.save({"model": state_dict, "optimizer": state_dict, "extra": dict}) bytes

and the file is exactly ``68 + h + p`` bytes. Loading checks the magic, the size and the digest
before anything is parsed, so every damaged byte and every truncation gives one
:class:`CheckpointError` naming the file; the payload is then read with
``torch.load(weights_only=True)`` (arbitrary objects are never unpickled) and its floating
weights must be finite. The header JSON holds ``format``, ``format_version``, ``model_class``
(``{"module", "qualname"}``), ``optimizer_class`` (same, or null), ``step`` (``extra["step"]`` or
null), ``versions`` (pyro_meta, torch, pyro, python) and ``meta``: the caller's JSON-able dict,
by convention ``meta["model_args"]`` (the model's constructor keyword arguments, used by
:func:`rebuild_model`) and ``meta["config"]`` (the training configuration).

Writes go to a temporary ``.ckpt-<pid>-*`` file in the same folder, fsync'ed and moved over the path
with ``os.replace``, with SIGINT deferred (in the main thread) until the new file is in place:
on disk there is always the old or the new complete checkpoint, and no temporary file is left.
A process killed outright (SIGKILL, power loss) can leave its temporary file behind: the next
:func:`check_writable` of a path in that folder (``fit`` calls it first) removes the ``.ckpt-<pid>-*``
files of writers that are no longer running (POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import math
import os
import pickle
import platform
import re
import signal
import struct
import tempfile
import threading
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import pyro
import torch

__all__ = [
    "CheckpointError",
    "check_writable",
    "load_checkpoint",
    "read_checkpoint_meta",
    "rebuild_model",
    "save_checkpoint",
]

PathLike = Union[str, os.PathLike]

MAGIC = b"PYRO-META-CKPT\n\x00"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<IQQ")  # version, header length, payload length
_START = len(MAGIC) + 32  # the digest covers [_START, end)
_HEADER_AT = _START + _FIXED.size
_RESERVED = ("model", "optimizer", "meta")
_LEAVES = (torch.Tensor, bool, int, float, str, type(None), torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: not a pyro_meta checkpoint, damaged, or not matching."""


# --------------------------------------------------------------------------- helpers
def _qualified(obj: type) -> Dict[str, str]:
    return {"module": obj.__module__, "qualname": obj.__qualname__}


def _name(rec: Optional[Dict[str, str]]) -> str:
    return "none" if not rec else f"{rec['module']}.{rec['qualname']}"


def _check_storable(obj: Any, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings, containers."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: keys must be str or int, got {type(k).__name__}")
            _check_storable(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_storable(v, f"{where}[{i}]")
    elif not isinstance(obj, _LEAVES):
        raise TypeError(
            f"{where} is a {type(obj).__name__}; a checkpoint stores only tensors, numbers, strings, "
            "None and lists/tuples/dicts of them"
        )


def _check_json(obj: Any, where: str) -> Any:
    """A JSON copy of ``obj`` (tuples become lists); ``TypeError`` naming the offending entry."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str (JSON), got {k!r}")
            out[k] = _check_json(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_check_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where} is {obj}; JSON metadata must be finite")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"{where} is a {type(obj).__name__}; metadata must be JSON-able (str, number, bool, None, "
        "lists and dicts of them)"
    )


def _nonfinite(state: Dict[str, Any], optimizer_state: Optional[Dict[str, Any]]) -> Optional[str]:
    """The name of the first floating tensor with NaN/inf in a model / optimizer state, or None."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return f"model weight {k!r}"
    for pid, slots in ((optimizer_state or {}).get("state") or {}).items():
        for k, v in slots.items() if isinstance(slots, dict) else ():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"optimizer state {k!r} of parameter {pid}"
    return None


def _check_step(step: Any, where: str) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{where}: extra['step'] must be a non-negative int, got {step!r}")


def _losses(value: Any, where: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise CheckpointError(f"{where}: extra['losses'] must be a 1-D sequence of numbers") from None
    if t.dim() != 1:
        raise CheckpointError(f"{where}: extra['losses'] must be 1-D, got shape {tuple(t.shape)}")
    return t


def _check_path(path: Any) -> str:
    """``path`` as a str: ``TypeError``/``ValueError`` naming the argument for anything else."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike naming a checkpoint file, got {type(path).__name__}")
    path = os.fspath(path)
    path = os.fsdecode(path) if isinstance(path, bytes) else path
    if not path or "\x00" in path:
        raise ValueError(f"path must name a checkpoint file, got {path!r}")
    return path


def _refuse_foreign(path: str) -> None:
    """Never overwrite a file that is not a pyro_meta checkpoint (e.g. a data file given by mistake)."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path!r} is a directory; give a file path")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise CheckpointError(f"{path!r} exists and is not a pyro_meta checkpoint; refusing to overwrite it")


@contextlib.contextmanager
def _defer_sigint() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) for the block; deliver it to the previous handler afterwards.

    In the main thread only (elsewhere Python delivers no signals, so nothing is deferred).
    A KeyboardInterrupt raised inside ``torch.save`` escapes as an unrelated ``RuntimeError``
    from its C++ writer and can leave a half-written file: the block must run to its end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler installed outside Python: we could not restore it
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if previous is signal.default_int_handler:
                raise KeyboardInterrupt
            if callable(previous):
                previous(signal.SIGINT, received[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


_TEMP = re.compile(r"^\.ckpt-(\d+)-")


def _temp_prefix() -> str:
    return f".ckpt-{os.getpid()}-"


def _remove_stale_temps(folder: str) -> None:
    """Remove the temporary files that writers killed mid-write left in ``folder`` (POSIX: the pid is gone)."""
    if os.name != "posix":
        return
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TEMP.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except (ProcessLookupError, OverflowError):  # no such process: the writer died mid-write
            pass
        except OSError:  # e.g. PermissionError: a running process of another user
            continue
        else:  # the writer is running
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- writing
def check_writable(path: PathLike) -> None:
    """Fail fast (``CheckpointError``) unless a checkpoint can be written at ``path``.

    Creates the folder if needed and writes and removes a temporary file in it; refuses a
    directory and an existing file that is not a pyro_meta checkpoint. Call it before training.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    _refuse_foreign(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with _defer_sigint():  # never leave the probe file behind
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), dir=folder)
            os.close(fd)
            os.remove(tmp)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e} ({folder!r})") from e
    _remove_stale_temps(folder)


def save_checkpoint(
    path: PathLike,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    extra: Optional[Dict[str, Any]] = None,
    meta: Optional[Dict[str, Any]] = None,
) -> None:
    """Write ``model`` (and ``optimizer``) state, ``extra`` and metadata to ``path`` atomically.

    Parameters
    ----------
    path : file path (its folder is created)
    model : torch.nn.Module
        Its ``state_dict()``; floating weights must be finite (NaN/inf raise ``CheckpointError``).
    optimizer : torch.optim.Optimizer, optional
    extra : dict, optional
        Tensors, numbers, strings and lists/dicts of them, returned by :func:`load_checkpoint`.
        ``extra["step"]`` must be a non-negative int (recorded in the header too);
        ``extra["losses"]`` (a sequence of numbers) is stored as float64 and loads as a list of floats.
    meta : dict, optional
        JSON-able metadata (tuples become lists): ``meta["model_args"]``, the model's constructor
        keyword arguments (for :func:`rebuild_model`), ``meta["config"]``, the training config.

    See the module docstring for the file format. SIGINT is deferred during the write.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of JSON-able values or None, got {type(meta).__name__}")
    path = os.fspath(path)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra may not use the reserved keys {clash}")
    if "step" in extra:
        _check_step(extra["step"], "save_checkpoint")
    if "losses" in extra:
        extra["losses"] = _losses(extra["losses"], "save_checkpoint")
    payload: Dict[str, Any] = {"model": model.state_dict(), "extra": extra}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    _check_storable(payload, "checkpoint")
    bad = _nonfinite(payload["model"], payload.get("optimizer"))
    if bad is not None:
        raise CheckpointError(f"save_checkpoint: {bad} has NaN or inf values; refusing to write {path!r}")
    from . import __version__

    header = {
        "format": "pyro_meta.checkpoint",
        "format_version": FORMAT_VERSION,
        "model_class": _qualified(type(model)),
        "optimizer_class": None if optimizer is None else _qualified(type(optimizer)),
        "step": extra.get("step"),
        "versions": {
            "pyro_meta": __version__,
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
        },
        "meta": _check_json(meta or {}, "meta"),
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    _refuse_foreign(path)
    folder = os.path.dirname(os.path.abspath(path))
    with _defer_sigint():
        buf = io.BytesIO()
        torch.save(payload, buf)
        body = [_FIXED.pack(FORMAT_VERSION, len(header_bytes), buf.getbuffer().nbytes), header_bytes, buf.getbuffer()]
        digest = hashlib.sha256()
        for part in body:
            digest.update(part)
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC)
                f.write(digest.digest())
                for part in body:
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(folder)
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoint {path!r}: {e.strerror or e}") from e
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


# --------------------------------------------------------------------------- reading
def _damaged(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path!r} is not a pyro_meta checkpoint, or it is damaged: {reason}")


def _read(path: PathLike):
    """``(header, payload bytes)`` of a verified checkpoint file."""
    path = _check_path(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        data = f.read()
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise _damaged(path, f"truncated to {len(data)} bytes")
        what = "a plain torch.save / zip file" if data[:4] == b"PK\x03\x04" else "unknown content"
        raise _damaged(path, f"it does not start with the pyro_meta magic bytes ({what})")
    if len(data) < _HEADER_AT:
        raise _damaged(path, f"truncated to {len(data)} bytes")
    version, h, p = _FIXED.unpack_from(data, _START)
    if len(data) != _HEADER_AT + h + p:
        raise _damaged(path, f"its size is {len(data)} bytes but its header says {_HEADER_AT + h + p} (truncated?)")
    if hashlib.sha256(memoryview(data)[_START:]).digest() != data[len(MAGIC) : _START]:
        raise _damaged(path, "SHA-256 checksum mismatch (the file changed after it was written)")
    if version != FORMAT_VERSION:
        raise _damaged(path, f"format version {version}; this pyro_meta reads version {FORMAT_VERSION}")
    try:
        header = json.loads(data[_HEADER_AT : _HEADER_AT + h].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _damaged(path, "its metadata is not valid JSON") from None
    if not isinstance(header, dict) or header.get("format") != "pyro_meta.checkpoint":
        raise _damaged(path, "its metadata does not describe a pyro_meta checkpoint")
    return path, header, memoryview(data)[_HEADER_AT + h :]


def read_checkpoint_meta(path: PathLike) -> Dict[str, Any]:
    """The metadata of a checkpoint (verified; the weights are not deserialised).

    Returns the header dict: ``model_class``, ``optimizer_class``, ``step``, ``versions``,
    ``meta`` (``model_args``, ``config``, ... as saved), ``format``, ``format_version``.
    """
    return _read(path)[1]


def _payload(path: str, header: Dict[str, Any], raw, map_location: Any) -> Dict[str, Any]:
    try:
        payload = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise _damaged(
            path,
            "its payload holds objects other than tensors, numbers and strings; pyro_meta refuses to unpickle them",
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of a verified payload is one clear error
        raise _damaged(path, f"its payload cannot be read ({type(e).__name__})") from None
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("model"), dict)
        or not isinstance(payload.get("extra"), dict)
    ):
        raise _damaged(path, "its payload is not {'model': ..., 'extra': ...}")
    bad = _nonfinite(payload["model"], payload.get("optimizer"))
    if bad is not None:
        raise _damaged(path, f"{bad} has NaN or inf values")
    extra = payload["extra"]
    if "step" in extra:
        _check_step(extra["step"], repr(path))
    if "losses" in extra:
        extra["losses"] = [float(v) for v in _losses(extra["losses"], repr(path)).tolist()]
    return payload


def _apply(path: str, header, payload, model, optimizer) -> None:
    """Load the weights (and optimizer state); on any failure both are left as they were."""
    saved_opt = header.get("optimizer_class")
    if optimizer is not None:
        if "optimizer" not in payload:
            raise CheckpointError(f"{path!r} holds no optimizer state; load it with optimizer=None")
        if saved_opt != _qualified(type(optimizer)):
            raise CheckpointError(
                f"{path!r} holds the state of optimizer {_name(saved_opt)}, which does not fit "
                f"the given {_name(_qualified(type(optimizer)))}"
            )
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, ValueError) as e:
        model.load_state_dict(backup)
        raise CheckpointError(
            f"the weights in {path!r} (saved from {_name(header.get('model_class'))}) do not fit "
            f"the given {type(model).__name__}: {e}"
        ) from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            model.load_state_dict(backup)
            raise CheckpointError(
                f"the optimizer state in {path!r} ({_name(saved_opt)}) does not fit the given "
                f"{type(optimizer).__name__} and its parameters: {e}"
            ) from None


def load_checkpoint(
    path: PathLike,
    model: Optional[torch.nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    map_location: Any = "cpu",
) -> Dict[str, Any]:
    """Verify and read a checkpoint; load it into ``model`` (and ``optimizer``) when given.

    Returns ``{"model": state_dict, "optimizer": state_dict (when saved), **extra, "meta": header}``;
    ``losses`` come back as a list of floats. Raises ``CheckpointError`` (a ``ValueError``) naming
    the file when it is not a pyro_meta checkpoint or is damaged, when its weights are not
    finite, when ``step`` is not a non-negative int, or when the weights / optimizer state do not
    fit ``model`` / ``optimizer`` (then neither is changed). A missing file raises
    ``FileNotFoundError``.
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if optimizer is not None and model is None:
        raise ValueError("load_checkpoint: pass the model together with its optimizer")
    path, header, raw = _read(path)
    payload = _payload(path, header, raw, map_location)
    if model is not None:
        _apply(path, header, payload, model, optimizer)
    state = {"model": payload["model"], **payload["extra"], "meta": header}
    if "optimizer" in payload:
        state["optimizer"] = payload["optimizer"]
    return state


def rebuild_model(path: PathLike, allow: Sequence[str] = ("pyro_meta",), map_location: Any = "cpu") -> torch.nn.Module:
    """Construct the recorded model class from its recorded arguments and load the weights.

    The class (``model_class`` in the header) is imported only when its module is in one of
    the packages ``allow`` (default ``("pyro_meta",)``: the library and its zoo); pass e.g.
    ``allow=("pyro_meta", "my_models")`` for your own modules. Why: importing a module runs its
    code and the constructor runs with arguments read from the file, so a crafted checkpoint
    could otherwise name any importable callable (``subprocess.Popen`` with its ``args``) and
    defeat ``weights_only``. The class must be a ``torch.nn.Module``; it is called as
    ``cls(**meta["model_args"])``.
    """
    if not isinstance(allow, (list, tuple)) or not all(isinstance(a, str) and a for a in allow):
        raise TypeError(f"allow must be a list of package names, got {allow!r}")
    path, header, raw = _read(path)
    rec = header.get("model_class") or {}
    module, qualname = rec.get("module"), rec.get("qualname")
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise _damaged(path, "no model class is recorded")
    packages = [a.rstrip(".") for a in allow]
    if not any(module == p or module.startswith(p + ".") for p in packages):
        raise CheckpointError(
            f"{path!r} records the model class {module}.{qualname}, outside the allowed packages "
            f"{packages}; pass allow=[..., {module.split('.')[0]!r}] if you trust it"
        )
    args = (header.get("meta") or {}).get("model_args")
    if not isinstance(args, dict):
        raise CheckpointError(
            f"{path!r} records no constructor arguments (meta['model_args']); build the "
            f"{qualname} yourself and call load_checkpoint(path, model)"
        )
    if "<locals>" in qualname:
        raise CheckpointError(
            f"{path!r}: the model class {qualname} was defined inside a function; it cannot be imported"
        )
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"{path!r}: cannot import the model class {module}.{qualname}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CheckpointError(f"{path!r}: {module}.{qualname} is not a torch.nn.Module class")
    payload = _payload(path, header, raw, map_location)
    try:
        model = cls(**args)
    except TypeError as e:
        raise CheckpointError(f"{path!r}: the recorded model_args {sorted(args)} do not fit {qualname}: {e}") from None
    _apply(path, header, payload, model, None)
    return model
