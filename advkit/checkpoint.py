"""Checkpoint files: written atomically, read with ``weights_only=True`` so a file can never run code."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import AdvkitError


def _atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file behind."""
    _atomic_write(path, lambda handle: torch.save(obj, handle), "wb")


def atomic_write_text(text: str, path: str | Path) -> None:
    """Text counterpart of ``atomic_save`` (metrics, configs, reports)."""
    _atomic_write(path, lambda handle: handle.write(text), "w")


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
