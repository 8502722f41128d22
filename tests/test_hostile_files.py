"""Checkpoints that are hostile, damaged or of another architecture: one clear line each, and no code run."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advkit import AdvkitError, load_trained_model, safe_load
from advkit.checkpoint import load_failure, load_state_dict_or_explain
from advkit.data import DIGITS_INFO
from advkit.models import build_model

# What torch 2.14 says about a file whose pickle refers to os.system (its long advice shortened).
TORCH_REFUSAL = (
    "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` "
    "argument in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to "
    "`False` will likely succeed, but it can result in arbitrary code execution. Do it only if you got "
    "the file from a trusted source.\n\n\nTrying to load unsupported GLOBAL posix.system whose module "
    "posix is blocked.\n\nCheck the documentation of torch.load to learn more about types accepted by "
    "default with weights_only https://pytorch.org/docs/stable/generated/torch.load.html."
)


class RunsShell:
    """Unpickling this object runs a shell command that creates ``marker``: proof that a loader executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_checkpoint_that_would_run_code_is_refused_by_name(tmp_path: Path) -> None:
    marker, path = tmp_path / "executed", tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": RunsShell(marker)}, path)
    with pytest.raises(AdvkitError) as error:
        safe_load(path, "teacher checkpoint")
    assert str(error.value) == (
        f"teacher checkpoint {path} refers to Python object 'posix.system', which advkit will "
        "not load (loading it could execute code); re-save the weights as a plain state_dict "
        "of tensors"
    )
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


def real_checkpoint(legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(64.0), "b": torch.ones(3)}, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(0).bytes(500),
        b"",
        real_checkpoint()[:300],
        real_checkpoint(legacy=True)[:-40],
        pickle.dumps({"w": [1, 2]}, protocol=2),  # a plain pickle, not a torch file
    ],
    ids=["random-bytes", "empty", "truncated-zip", "truncated-legacy", "plain-pickle"],
)
def test_damaged_checkpoint_is_unreadable_never_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)
    with pytest.raises(AdvkitError) as error:
        safe_load(path)
    message = str(error.value)
    assert message.startswith(f"checkpoint {path} is not a readable PyTorch file (")
    assert "\n" not in message and "weights_only" not in message and "will not load" not in message


@pytest.mark.parametrize(
    "exc, expected",
    [
        (pickle.UnpicklingError(TORCH_REFUSAL), "refers to Python object 'posix.system', which advkit will not load"),
        (
            pickle.UnpicklingError("Weights only load failed. ...\nTrying to call reduce for unrecognized function 5"),
            "refers to Python objects other than tensors, which advkit will not load",
        ),
        (
            pickle.UnpicklingError(
                "Weights only load failed.\nUnsupported global: GLOBAL torch. was not an allowed global"
            ),
            "is not a readable PyTorch file (a damaged reference to 'torch.')",
        ),
        (pickle.UnpicklingError("invalid load key, 'x'."), "is not a readable PyTorch file (invalid load key, 'x')"),
        (IndexError("pop from empty list"), "is not a readable PyTorch file (pop from empty list)"),
        (EOFError(), "is not a readable PyTorch file (it is empty or ends too early)"),
    ],
    ids=["blocked-global", "no-name", "cut-off-name", "bad-key", "index-error", "eof"],
)
def test_load_failure_tells_refused_from_damaged(exc: BaseException, expected: str) -> None:
    message = str(load_failure(exc, "teacher checkpoint", "t.pt"))
    assert message.startswith(f"teacher checkpoint t.pt {expected}")
    assert "\n" not in message and "weights_only" not in message


class Head(nn.Module):
    """A tiny network whose layers are named like advkit's: net.features, net.fc."""

    def __init__(self, width: int, extra: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential()
        self.net.add_module("features", nn.Linear(4, width))
        self.net.add_module("fc", nn.Linear(width, 10))
        if extra:
            self.net.add_module("aux", nn.Linear(10, 10))


def test_misfit_state_dict_names_its_keys() -> None:
    with pytest.raises(AdvkitError) as error:
        load_state_dict_or_explain(Head(128), Head(64).state_dict(), "teacher w.pt: weights do not fit 'head'")
    assert str(error.value) == (
        "teacher w.pt: weights do not fit 'head': shape of net.features.weight is [64, 4] in the file but [128, 4] "
        "in the model; shape of net.features.bias is [64] in the file but [128] in the model; shape of "
        "net.fc.weight is [10, 64] in the file but [10, 128] in the model"
    )
    with pytest.raises(AdvkitError) as error:
        load_state_dict_or_explain(Head(8), Head(8, extra=True).state_dict(), "w.pt")
    assert str(error.value) == "w.pt: unexpected 2 (net.aux.weight, net.aux.bias)"
    load_state_dict_or_explain(Head(8, extra=True), Head(8, extra=True).state_dict(), "w.pt")  # fits: no error


def test_other_architecture_lists_three_missing_and_unexpected_keys() -> None:
    small, resnet = build_model("small-cnn", DIGITS_INFO), build_model("resnet18", DIGITS_INFO).state_dict()
    missing = [key for key in small.state_dict() if key not in resnet]
    unexpected = [key for key in resnet if key not in small.state_dict()]
    assert len(missing) > 3 and len(unexpected) > 3
    with pytest.raises(AdvkitError) as error:
        load_state_dict_or_explain(small, resnet, "teacher r.pt: weights do not fit architecture 'small-cnn'")
    assert str(error.value).startswith(
        f"teacher r.pt: weights do not fit architecture 'small-cnn': missing {len(missing)} keys "
        f"({', '.join(missing[:3])}, …); unexpected {len(unexpected)} ({', '.join(unexpected[:3])}, …)"
    )


def test_advkit_checkpoint_of_another_shape_says_which_weights_differ(tmp_path: Path) -> None:
    five_classes = dataclasses.replace(DIGITS_INFO, num_classes=5)
    path = tmp_path / "best.pt"
    torch.save(
        {
            "model": build_model("small-cnn", DIGITS_INFO).state_dict(),
            "config": {"model": "small-cnn"},
            "dataset_info": dataclasses.asdict(five_classes),
        },
        path,
    )
    with pytest.raises(AdvkitError) as error:
        load_trained_model(path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: weights do not fit model 'small-cnn': shape of net\.\S+\.weight is "
        r"\[10, \d+\] in the file but \[5, \d+\] in the model; shape of net\.\S+\.bias is \[10\] in "
        r"the file but \[5\] in the model",
        str(error.value),
    )
