"""The bad-input battery: malformed settings, command-line values, edited runs and damaged or hostile files.

Every case must end with exit status 2 and one ``advkit: error:`` line (no traceback), leave no run
directory behind and leave an existing run's files untouched. Run as a script for the figure:

    python tests/test_bad_inputs.py     # prints "N tried, N handled cleanly" and each failure
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

B = ["--dataset", "digits", "--model", "small-cnn", "--epochs", "1", "--val-steps", "1", "--quiet"]


@dataclass
class Case:
    """One bad input: ``make(folder)`` writes what it needs under ``folder`` and returns the CLI arguments."""

    name: str
    make: Callable[[Path], list[str]]


def _yaml(text: str, *extra: str) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        (folder / "cfg.yaml").write_text("dataset: digits\nmodel: small-cnn\nepochs: 1\n" + text)
        return ["train", "--config", str(folder / "cfg.yaml"), "--quiet", *extra]

    return make


def _flags(*flags: str) -> Callable[[Path], list[str]]:
    return lambda folder: ["train", *B, *flags]


def _raw_yaml(content: bytes) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        (folder / "cfg.yaml").write_bytes(content)
        return ["train", "--config", str(folder / "cfg.yaml"), "--quiet"]

    return make


def _write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(">u1").tobytes())


def _fashion(labels_value: int | None = None, truncate: bool = False) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        root = folder / "data" / "fashion-mnist"
        labels = np.arange(20) % 10
        if labels_value is not None:
            labels[3] = labels_value
        _write_idx(root / "train-images-idx3-ubyte", np.zeros((20, 28, 28)))
        _write_idx(root / "train-labels-idx1-ubyte", labels)
        _write_idx(root / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)))
        _write_idx(root / "t10k-labels-idx1-ubyte", np.arange(5) % 10)
        if truncate:
            data = (root / "train-images-idx3-ubyte").read_bytes()
            (root / "train-images-idx3-ubyte").write_bytes(data[:100])
        return [
            "train",
            "--dataset",
            "fashion-mnist",
            "--model",
            "small-cnn",
            "--data-dir",
            str(folder / "data"),
            "--batch-size",
            "4",
            "--val-size",
            "4",
            "--quiet",
        ]

    return make


def _cifar(batch: Callable[[int], object]) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        root = folder / "data" / "cifar-10-batches-py"
        root.mkdir(parents=True, exist_ok=True)
        for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            (root / name).write_bytes(pickle.dumps(batch(index), protocol=2))
        return ["train", "--dataset", "cifar10", "--model", "small-cnn", "--data-dir", str(folder / "data"), "--quiet"]

    return make


def _cifar_batch(n_data: int = 2, n_labels: int = 2) -> Callable[[int], object]:
    return lambda index: {b"data": np.zeros((n_data, 3072), dtype=np.uint8), b"labels": list(range(n_labels))}


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def _svhn_empty(folder: Path) -> list[str]:
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (folder / "data" / name).write_bytes(b"")
    return ["train", "--dataset", "svhn", "--model", "small-cnn", "--data-dir", str(folder / "data"), "--quiet"]


def _tiny_imagenet_empty(folder: Path) -> list[str]:
    for part in ("train", "val"):
        (folder / "data" / "tiny-imagenet-200" / part).mkdir(parents=True)
    return [
        "train",
        "--dataset",
        "tiny-imagenet",
        "--model",
        "small-cnn",
        "--data-dir",
        str(folder / "data"),
        "--quiet",
    ]


def _edited_run(edit: Callable[[str], str]) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        run = _copy_run(folder)
        (run / "config.yaml").write_text(edit((run / "config.yaml").read_text()))
        return ["train", "--resume", str(run)]

    return make


def _damaged_checkpoint(content: Callable[[Path], None], command: str = "resume") -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        run = _copy_run(folder)
        content(run / "last.pt")
        content(run / "best.pt")
        return ["train", "--resume", str(run)] if command == "resume" else ["eval", str(run), "--n-examples", "8"]

    return make


def _evil_checkpoint(path: Path) -> None:
    path.unlink()
    torch.save({"model": _RunsCode()}, path)


def _random_bytes(path: Path) -> None:
    path.unlink()
    path.write_bytes(os.urandom(4096))


def _with_run(*args: str) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        run = _copy_run(folder)
        return [arg.replace("RUN", str(run)).replace("DIR", str(folder)) for arg in args]

    return make


def _file_at(name: str, content: str, *args: str) -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        (folder / name).write_text(content)
        run = _copy_run(folder)
        return [arg.replace("RUN", str(run)).replace("DIR", str(folder)) for arg in args]

    return make


CASES = [
    # --- YAML settings files
    Case("yaml epochs: ten", _yaml('epochs: "ten"\n')),
    Case("yaml epochs: 2.5", _yaml("epochs: 2.5\n")),
    Case("yaml batch_size: '64'", _yaml('batch_size: "64"\n')),
    Case("yaml seed: abc", _yaml("seed: abc\n")),
    Case("yaml seed: 2**70", _yaml(f"seed: {2**70}\n")),
    Case("yaml seed: -1", _yaml("seed: -1\n")),
    Case("yaml lr_milestones: 5", _yaml("lr_milestones: 5\n")),
    Case("yaml lr_milestones: [a]", _yaml("lr_milestones: [a]\n")),
    Case("yaml val_size: 10%", _yaml("val_size: 10%\n")),
    Case("yaml val_size: 5000", _yaml("val_size: 5000\n")),
    Case("yaml val_size: -3", _yaml("val_size: -3\n")),
    Case("yaml model: 5", _yaml("model: 5\n")),
    Case("yaml nesterov: maybe", _yaml("nesterov: maybe\n")),
    Case("yaml lr: .inf", _yaml("lr: .inf\n")),
    Case("yaml eps: .nan", _yaml("eps: .nan\n")),
    Case("yaml eps: 8/0", _yaml("eps: 8/0\n")),
    Case("yaml eps: 2", _yaml("eps: 2\n")),
    Case("yaml unknown key", _yaml("epoch: 3\n")),
    Case("yaml options: 5", _yaml("options: 5\n")),
    Case("yaml options bare key", _yaml("options: {beta: 3}\n")),
    Case("yaml options bad value", _yaml("objective: trades\noptions: {trades.beta: abc}\n")),
    Case("yaml options unknown component", _yaml("options: {nosuch.beta: 1}\n")),
    Case("yaml options unknown key", _yaml("options: {attack.nosuch: 1}\n")),
    Case("yaml dataset: nosuch", _yaml("dataset: nosuch\n")),
    Case("yaml objective: nosuch", _yaml("objective: nosuch\n")),
    Case("yaml lr_schedule: weird", _yaml("lr_schedule: weird\n")),
    Case("yaml amp: fp8", _yaml("amp: fp8\n")),
    Case("yaml device: tpu", _yaml("device: tpu\n")),
    Case("yaml select: wa without wa", _yaml("select: wa\n")),
    Case("yaml wa: 1.5", _yaml("wa: 1.5\n")),
    Case("yaml momentum: 1", _yaml("momentum: 1\n")),
    Case("yaml checkpoint_every: 0", _yaml("checkpoint_every: 0\n")),
    Case("yaml top level is a list", _raw_yaml(b"- 1\n- 2\n")),
    Case("yaml invalid", _raw_yaml(b"epochs: [1,\n")),
    Case("yaml binary garbage", _raw_yaml(bytes(range(256)) * 4)),
    Case("config file missing", lambda folder: ["train", "--config", str(folder / "nope.yaml")]),
    Case("config path is a folder", lambda folder: ["train", "--config", str(folder)]),
    # --- command-line values
    Case("--eps 8/0", _flags("--eps", "8/0")),
    Case("--eps abc", _flags("--eps", "abc")),
    Case("--eps 2", _flags("--eps", "2")),
    Case("--lr inf", _flags("--lr", "inf")),
    Case("--lr nan", _flags("--lr", "nan")),
    Case("--lr -1", _flags("--lr", "-1")),
    Case("--seed 2**70", _flags("--seed", "2**70")),
    Case("--seed 2^70 digits", _flags("--seed", str(2**70))),
    Case("--epochs 0", _flags("--epochs", "0")),
    Case("--batch-size 0", _flags("--batch-size", "0")),
    Case("--batch-size 100000", _flags("--batch-size", "100000")),
    Case("--val-size 1.5", _flags("--val-size", "1.5")),
    Case("--lr-milestones a,b", _flags("--lr-milestones", "a,b")),
    Case("--lr-milestones -1", _flags("--lr-milestones", "-1")),
    Case("-o trades.beta=abc", _flags("--objective", "trades", "-o", "trades.beta=abc")),
    Case("-o beta=3", _flags("-o", "beta=3")),
    Case("-o nosuch.beta=1", _flags("-o", "nosuch.beta=1")),
    Case("-o attack.steps=-1", _flags("-o", "attack.steps=-1")),
    Case("-o attack.eps=inf", _flags("--attack", "pgd", "-o", "attack.alpha=inf")),
    Case("--model wrn-x-y", _flags("--model", "wrn-x-y")),
    Case("--model timm:no_such_net", _flags("--model", "timm:no_such_net")),
    Case("--teacher missing file", _flags("--objective", "rslad", "--teacher", "/nonexistent/t.pt")),
    Case("--teacher robustbench:Nope", _flags("--objective", "rslad", "--teacher", "robustbench:cifar10/Nope")),
    Case("teacher needed but absent", _flags("--objective", "rslad")),
    Case("--device cuda without CUDA", _flags("--device", "cuda")),
    Case("--checkpoint-every 0", _flags("--checkpoint-every", "0")),
    Case("--awp-variant bad", _flags("--awp-variant", "bad")),
    Case("--unknown-flag", _flags("--unknown-flag")),
    Case(
        "--out some_file/sub",
        lambda folder: (
            (folder / "some_file").write_text("x") and ["train", *B, "--out", str(folder / "some_file" / "sub")]
        ),
    ),
    Case("--dataset cifar10 absent", _flags("--dataset", "cifar10", "--data-dir", "/nonexistent")),
    # --- runs edited or damaged
    Case("--resume with --lr", _with_run("train", "--resume", "RUN", "--lr", "0.1")),
    Case("--resume missing folder", lambda folder: ["train", "--resume", str(folder / "nope")]),
    Case(
        "--resume without last.pt",
        lambda folder: (
            (folder / "r").mkdir()
            or (folder / "r" / "config.yaml").write_text("dataset: digits\n")
            and ["train", "--resume", str(folder / "r")]
        ),
    ),
    Case("--resume config.yaml invalid YAML", _edited_run(lambda text: text + "\n  - [unclosed")),
    Case("--resume config.yaml wrong type", _edited_run(lambda text: text.replace("epochs: 2", "epochs: two"))),
    Case("--resume config.yaml other model", _edited_run(lambda text: text.replace("small-cnn", "resnet18"))),
    Case("--resume config.yaml other seed", _edited_run(lambda text: text.replace("seed: 0", "seed: 9"))),
    Case("--resume corrupt last.pt", _damaged_checkpoint(_random_bytes)),
    Case("--resume malicious last.pt", _damaged_checkpoint(_evil_checkpoint)),
    Case("eval corrupt best.pt", _damaged_checkpoint(_random_bytes, "eval")),
    Case("eval malicious best.pt", _damaged_checkpoint(_evil_checkpoint, "eval")),
    # --- data files
    Case("fashion-mnist label 255", _fashion(labels_value=255)),
    Case("fashion-mnist truncated images", _fashion(truncate=True)),
    Case("cifar data and labels differ", _cifar(_cifar_batch(n_data=3, n_labels=2))),
    Case("cifar data not 3072 wide", _cifar(lambda index: {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})),
    Case("cifar malicious pickle", _cifar(lambda index: {b"data": _RunsCode(), b"labels": [0]})),
    Case("cifar label 10", _cifar(lambda index: {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})),
    Case("svhn empty .mat", _svhn_empty),
    Case("tiny-imagenet without images", _tiny_imagenet_empty),
    # --- evaluation and plots
    Case("eval --eps 8/0", _with_run("eval", "RUN", "--eps", "8/0")),
    Case("eval missing target", lambda folder: ["eval", str(folder / "nope")]),
    Case("eval --attack nosuch", _with_run("eval", "RUN", "--attack", "nosuch")),
    Case("eval --attack pgd:steps=abc", _with_run("eval", "RUN", "--attack", "pgd:steps=abc")),
    Case("eval --n-examples 0", _with_run("eval", "RUN", "--n-examples", "0")),
    Case("eval --batch-size 0", _with_run("eval", "RUN", "--batch-size", "0")),
    Case("eval --json under a file", _file_at("f", "x", "eval", "RUN", "--json", "DIR/f/r.json")),
    Case("eval --json is a folder", _with_run("eval", "RUN", "--json", "DIR")),
    Case("sanity --tolerance 2", _with_run("sanity", "RUN", "--tolerance", "2")),
    Case("plot curves not a run", lambda folder: ["plot", "curves", str(folder)]),
    Case("plot curves metrics garbage", _file_at("m", "", "plot", "curves", "DIR/bad")),
    Case("plot calibration --bins 0", _with_run("plot", "calibration", "RUN", "--bins", "0")),
    Case("plugins show nosuch", lambda folder: ["plugins", "show", "nosuch"]),
]

_RUN_CACHE: dict[str, Path] = {}


def _copy_run(folder: Path) -> Path:
    """A copy of one finished 1-of-2-epoch digits run (trained once per process), to edit or damage."""
    if "run" not in _RUN_CACHE:
        from advkit import TrainConfig, Trainer

        source = Path(tempfile.mkdtemp(prefix="advkit-battery-")) / "run"
        config = TrainConfig(
            dataset="digits",
            model="small-cnn",
            epochs=2,
            batch_size=64,
            val_steps=1,
            seed=0,
            eps=0.1,
            options={"attack": {"steps": "1"}},
        )
        with contextlib.redirect_stdout(io.StringIO()):
            Trainer(config, source, progress=False).fit(stop_after_epoch=1)
        _RUN_CACHE["run"] = source
    target = folder / "run"
    shutil.copytree(_RUN_CACHE["run"], target)
    return target


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".advkit.lock"
    }


def run_case(case: Case, folder: Path) -> str | None:
    """None when ``case`` is handled cleanly, else what went wrong."""
    from advkit.cli import main

    (folder / "data").mkdir(exist_ok=True)
    args = case.make(folder)
    if "train" in args[:1] and "--out" not in args and "--resume" not in args:
        args = [*args, "--out", str(folder / "out")]
    before = _digests(folder)
    err, out = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["advkit", *args]
    code: object = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            main()
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # the battery reports any escape, it does not stop at one
        return f"escaped with {type(exc).__name__}: {exc}"
    finally:
        sys.argv = argv
    lines = err.getvalue().strip().splitlines()
    if code != 2:
        return f"exit status {code!r}, stderr {err.getvalue()[-300:]!r}"
    if len(lines) != 1 or not lines[0].startswith("advkit: error: ") or "Traceback" in err.getvalue():
        return f"stderr is not one advkit line: {err.getvalue()[-300:]!r}"
    if "weights_only" in lines[0]:
        return f"the message suggests turning weights_only off: {lines[0]}"
    if (folder / "out").exists():
        return f"left a run directory behind: {sorted(p.name for p in (folder / 'out').iterdir())}"
    if _digests(folder) != before:
        return "changed files that existed before"
    return None


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_handled_cleanly(case: Case, tmp_path: Path) -> None:
    problem = run_case(case, tmp_path)
    assert problem is None, problem


if __name__ == "__main__":
    torch.set_num_threads(1)
    failures = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            problem = run_case(case, Path(folder))
        if problem is not None:
            failures.append((case.name, problem))
    for name, problem in failures:
        print(f"NOT CLEAN  {name}: {problem}")
    print(f"{len(CASES)} tried, {len(CASES) - len(failures)} handled cleanly")
    sys.exit(1 if failures else 0)
