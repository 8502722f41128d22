"""Checkpoint files: written atomically, read with ``weights_only=True`` so a file can never run code."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .errors import AdvkitError, WriteFailed

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished files get the permissions a plain open() would give them.
FILE_MODE = 0o666 & ~_current_umask()


def _atomic_write(path: str | Path, write: Callable[[IO[Any]], object], mode: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file.

    A failed write (disk full, read-only filesystem) removes the temporary and raises ``WriteFailed``
    with one line; the file at ``path`` is then exactly what it was before.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(handle, mode) as tmp:
            os.fchmod(tmp.fileno(), FILE_MODE)
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    except RuntimeError as exc:  # torch.save's zip writer reports a failed write as a RuntimeError
        cause = _os_error_behind(exc)
        if cause is None:
            raise
        raise write_failed(path, cause) from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            Path(tmp_name).unlink(missing_ok=True)


def _os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError that an exception was raised while handling, if any (walks ``__context__``)."""
    seen = exc.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    return seen


def write_failed(path: str | Path, exc: OSError) -> WriteFailed:
    """The one-line error for an OSError while writing ``path``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    previous = "the previous file is unchanged" if Path(path).exists() else "nothing was written"
    return WriteFailed(f"cannot write {path}: {reason}; {previous}")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file behind."""
    _atomic_write(path, lambda handle: torch.save(obj, handle), "wb")


def atomic_write_text(text: str, path: str | Path) -> None:
    """Text counterpart of ``atomic_save`` (metrics, configs, reports)."""
    _atomic_write(path, lambda handle: handle.write(text), "w")


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Binary counterpart of ``atomic_write_text`` (figures, copies)."""
    _atomic_write(path, lambda handle: handle.write(data), "wb")


def atomic_duplicate(source: str | Path, path: str | Path) -> None:
    """Make ``path`` hold what ``source`` holds, atomically: a hard link where the filesystem has them
    (no second write of a large checkpoint), else a copy. Later atomic writes to either name replace
    that name only."""
    source, path = Path(source), Path(path)
    tmp = path.parent / f".{path.name}.link{TEMP_SUFFIX}"
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        atomic_write_bytes(source.read_bytes(), path)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries of atomic writes that a killed process left in ``folder``; returns them.

    Only for a folder this process holds the lock of: another writer's temporary would vanish too.
    """
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """Load tensors and plain Python only; anything that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise AdvkitError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # on damaged bytes torch.load fails with almost any type (IndexError, zlib.error, ...)
        raise load_failure(exc, what, path) from None


# Phrases of torch's weights-only unpickler when a file names (or would call or build) a Python object it refuses.
_REFUSALS = ("GLOBAL ", "Trying to call reduce", "Can only create new object", "Can only build")
# A real module.name; damaged or cut-off files make torch report fragments such as 'torch.' or 'torch.Flo}t'.
_PYTHON_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
# Lines of torch's text that advise loosening the protection; they are never shown.
_TORCH_ADVICE = ("weights_only", "safe_globals", "trust")


def load_failure(exc: BaseException, what: str, path: str | Path) -> AdvkitError:
    """advkit's one line for any failure of ``torch.load(weights_only=True)``: refused (unsafe) or unreadable.

    Torch's own text is never passed on whole: it suggests turning the weights-only protection off, which
    would run whatever code the file carries.
    """
    text = str(exc)
    named = re.search(r"GLOBAL (\S+)", text)
    if isinstance(exc, pickle.UnpicklingError) and any(phrase in text for phrase in _REFUSALS):
        if named is None or _PYTHON_NAME.fullmatch(named.group(1)):
            culprit = f"Python object '{named.group(1)}'" if named else "Python objects other than tensors"
            return AdvkitError(
                f"{what} {path} refers to {culprit}, which advkit will not load (loading it could "
                "execute code); re-save the weights as a plain state_dict of tensors"
            )
        detail = f"a damaged reference to '{named.group(1)}'"
    else:
        lines = [
            line.strip()
            for line in text.replace("Weights only load failed.", "").splitlines()
            if line.strip() and not any(advice in line for advice in _TORCH_ADVICE)
        ]
        if lines:
            detail = lines[0].split(". ")[0].rstrip(".")
        else:
            detail = "it is empty or ends too early" if isinstance(exc, EOFError) else type(exc).__name__
    return AdvkitError(f"{what} {path} is not a readable PyTorch file ({detail}); it is damaged or not a checkpoint")


def load_state_dict_or_explain(module: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """``module.load_state_dict(state)`` (strict); a mismatch becomes one line that says which keys do not fit.

    ``what`` opens the message, e.g. ``"teacher w.pt: weights do not fit architecture 'resnet18'"``; torch's own
    message puts the keys on later lines, which a one-line error would drop.
    """
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        own = module.state_dict()
        missing = [key for key in own if key not in state]
        unexpected = [key for key in state if key not in own]
        reshaped = [
            f"shape of {key} is {list(state[key].shape)} in the file but {list(own[key].shape)} in the model"
            for key in own
            if isinstance(state.get(key), torch.Tensor) and state[key].shape != own[key].shape
        ]
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key{'s' if len(missing) > 1 else ''} ({_some(missing)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({_some(unexpected)})")
        if reshaped:
            more = f" and {len(reshaped) - 3} more of another shape" if len(reshaped) > 3 else ""
            parts.append("; ".join(reshaped[:3]) + more)
        detail = "; ".join(parts) or " ".join(str(exc).split())  # e.g. a module's own loading hook failed
        raise AdvkitError(f"{what}: {detail}") from None


def _some(keys: list[str]) -> str:
    """Up to three keys, with an ellipsis when there are more."""
    return ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu", *, averaged: bool = False
) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """Rebuild the model an advkit checkpoint holds: returns (model in eval mode, run config, DatasetInfo).

    ``averaged`` picks the weight-averaged (``--wa``) copy when the run kept one.
    """
    from .data import DatasetInfo
    from .models import build_model

    state = safe_load(path)
    if not isinstance(state, dict) or "model" not in state or "dataset_info" not in state:
        raise AdvkitError(f"{path} is not an advkit checkpoint (no model/dataset_info entries)")
    fields: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in state["dataset_info"].items()
    }
    info = DatasetInfo(**fields)
    config = state.get("config", {})
    weights = state["model"]
    if averaged:
        averages = state.get("averages") or {}
        wa = config.get("wa")
        key = str(wa) if wa is not None and str(wa) in averages else next(iter(averages), None)
        if key is None:
            raise AdvkitError(f"{path} holds no weight-averaged model (the run was trained without --wa)")
        weights = averages[key]["model"]
    model = build_model(config["model"], info)
    load_state_dict_or_explain(model, weights, f"{path}: weights do not fit model '{config['model']}'")
    return model.to(device).eval(), config, info
