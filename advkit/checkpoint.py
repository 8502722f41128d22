"""Checkpoint files: written atomically, read with ``weights_only=True`` so a file can never run code."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import torch
from torch import nn

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
            return AdvkitError(f"{what} {path} refers to {culprit}, which advkit will not load (loading it could "
                               "execute code); re-save the weights as a plain state_dict of tensors")
        detail = f"a damaged reference to '{named.group(1)}'"
    else:
        lines = [line.strip() for line in text.replace("Weights only load failed.", "").splitlines()
                 if line.strip() and not any(advice in line for advice in _TORCH_ADVICE)]
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
        reshaped = [f"shape of {key} is {list(state[key].shape)} in the file but {list(own[key].shape)} in the model"
                    for key in own if isinstance(state.get(key), torch.Tensor) and state[key].shape != own[key].shape]
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
    load_state_dict_or_explain(model, weights, f"{path}: weights do not fit model '{config['model']}'")
    return model.to(device).eval(), config, info
