"""Checkpoint files: written atomically, read with ``weights_only=True`` so a file can never run code."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import AdvkitError, WriteFailed


TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished files get the permissions a plain open() would give them.
FILE_MODE = 0o666 & ~_current_umask()


def _atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str) -> None:
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
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        if "global" in detail.lower():  # the file names a class or function to call: refuse it
            raise AdvkitError(
                f"{what} {path} needs arbitrary unpickling, which advkit refuses (it could execute code): {detail}; "
                "re-save it as a plain state_dict"
            ) from None
        raise AdvkitError(f"{what} {path} is not a readable PyTorch file: {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdvkitError(f"{what} {path} is not a readable PyTorch file: {first}") from None


def _unpickler_detail(message: str) -> str:
    """The one informative line of torch's long weights-only refusal (what it tripped on)."""
    _, marker, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if marker else message).splitlines() if line.strip()]
    return lines[0].split(". Please use")[0] if lines else "unpickling failed"


def load_trained_model(path: str | Path, device: torch.device | str = "cpu", *, averaged: bool = False) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """Rebuild the model an advkit checkpoint holds: returns (model in eval mode, run config, DatasetInfo).

    ``averaged`` picks the weight-averaged (``--wa``) copy when the run kept one.
    """
    from .data import DatasetInfo
    from .models import build_model

    state = safe_load(path)
    if not isinstance(state, dict) or "model" not in state or "dataset_info" not in state:
        raise AdvkitError(f"{path} is not an advkit checkpoint (no model/dataset_info entries)")
    info = DatasetInfo(**{key: tuple(value) if isinstance(value, list) else value
                          for key, value in state["dataset_info"].items()})
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
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise AdvkitError(f"{path}: weights do not fit model '{config['model']}': {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), config, info
