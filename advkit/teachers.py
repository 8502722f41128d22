"""Teachers for distillation: frozen models from RobustBench, timm, advkit runs or plain state_dict files.

``--teacher`` accepts

- ``robustbench:NAME``, ``robustbench:DATASET/NAME`` or ``robustbench:DATASET/THREAT/NAME`` — the
  RobustBench model zoo (dataset from the run and threat model ``Linf`` unless given). Checkpoints live
  in the zoo's own layout under the cache directory, ``{cache}/{dataset}/{threat}/{NAME}.pt``; one
  that is there is used without network, and a missing one is downloaded only with ``--download``.
- ``timm:NAME`` (timm's pretrained weights) or ``timm:NAME@FILE`` (that architecture, weights from FILE).
- an advkit run directory (its ``best.pt``) or an advkit checkpoint file.
- a plain state_dict file, with ``--teacher-arch`` naming the advkit architecture.

Every teacher comes back frozen (``eval()``, ``requires_grad_(False)``) on the student's device, after a
dry forward has checked that it takes the dataset's inputs and predicts its number of classes. Files
are read with ``torch.load(weights_only=True)``: a checkpoint that would need arbitrary unpickling is
refused, never executed.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_failure, load_state_dict_or_explain, load_trained_model, safe_load
from .compat import import_robustbench, import_timm, timm_hub_problem
from .errors import AdvkitError
from .models import NormalizedModel, build_model

ROBUSTBENCH_PREFIX = "robustbench:"
TIMM_PREFIX = "timm:"
DEFAULT_THREAT = "Linf"


def load_teacher(
    spec: str,
    info: Any,
    device: torch.device | str,
    *,
    arch: str | None = None,
    data_dir: str | Path = "data",
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> nn.Module:
    """Load the teacher ``spec`` for a run on the dataset ``info`` (a ``DatasetInfo``); frozen, on ``device``.

    ``cache_dir`` holds RobustBench checkpoints (default ``{data_dir}/robustbench``); ``download`` lets
    RobustBench fetch a missing one.
    """
    if spec.startswith(ROBUSTBENCH_PREFIX):
        cache = Path(cache_dir) if cache_dir is not None else Path(data_dir) / "robustbench"
        model = _robustbench_teacher(spec[len(ROBUSTBENCH_PREFIX) :], info, cache, download)
    elif spec.startswith(TIMM_PREFIX):
        name, _, file = spec[len(TIMM_PREFIX) :].partition("@")
        model = _file_teacher(Path(file), info, f"timm:{name}") if file else _timm_pretrained(name, spec)
    else:
        model = _path_teacher(Path(spec), info, arch)
    model = freeze(model.to(device))
    check_compatible(model, info, spec, device)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: attacks still get input gradients through the teacher."""
    model.eval()
    model.requires_grad_(False)
    return model


def check_compatible(model: nn.Module, info: Any, spec: str, device: torch.device | str) -> None:
    """A dry forward on two blank images of the dataset's shape: right input convention, right class count."""
    probe = torch.zeros(2, *info.input_shape, device=device)
    try:
        with torch.no_grad():
            logits = model(probe)
    except RuntimeError as exc:
        raise AdvkitError(
            f"teacher {spec} cannot take {info.name} images of shape {tuple(info.input_shape)}: {_first_line(exc)}"
        ) from None
    classes = logits.shape[-1] if logits.dim() == 2 else None
    if classes != info.num_classes:
        got = f"{classes} classes" if classes is not None else f"outputs of shape {tuple(logits.shape)}"
        raise AdvkitError(
            f"teacher {spec} predicts {got}, but {info.name} has {info.num_classes}; "
            "use a teacher trained on this dataset"
        )


# --------------------------------------------------------------------------------------------- RobustBench
def robustbench_checkpoint_paths(
    cache: Path, dataset: str, threat: str, name: str, ensemble_size: int = 0
) -> list[Path]:
    """Where RobustBench's ``load_model`` looks for a zoo checkpoint (ensembles: one file per member)."""
    base = cache / dataset / threat / f"{name}.pt"
    if ensemble_size:
        return [Path(f"{base}_m{index}.pt") for index in range(ensemble_size)]
    return [base]


def _robustbench_teacher(rest: str, info: Any, cache: Path, download: bool) -> nn.Module:
    import_robustbench()
    timm = import_timm()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model

    parts = rest.split("/")
    if len(parts) > 3 or not all(parts):
        raise AdvkitError(
            f"--teacher robustbench:{rest}: expected robustbench:NAME, robustbench:DATASET/NAME "
            "or robustbench:DATASET/THREAT/NAME"
        )
    name = parts[-1]
    dataset = parts[0] if len(parts) >= 2 else info.name
    threat = parts[1] if len(parts) == 3 else DEFAULT_THREAT
    datasets = [d.value for d in BenchmarkDataset]
    if dataset not in datasets:
        raise AdvkitError(
            f"RobustBench has no model zoo for dataset '{dataset}' (it has {', '.join(datasets)}); "
            f"name one explicitly, e.g. robustbench:cifar10/{name}"
        )
    threats = [t.value for t in model_dicts[BenchmarkDataset(dataset)]]
    if threat not in threats:
        raise AdvkitError(f"RobustBench has no '{threat}' models for {dataset} (it has {', '.join(threats)})")
    zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see robustbench.model_zoo for the names)"
        raise AdvkitError(f"unknown RobustBench model '{name}' for {dataset}/{threat}{hint}")
    spec = f"robustbench:{dataset}/{threat}/{name}"

    # RobustBench serves a few zoo entries through timm from the Hugging Face hub instead of a file.
    if timm.is_model(f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"):
        if not download:
            raise AdvkitError(
                f"{spec} is served through timm from the Hugging Face hub, not from a file; pass "
                "--download (with HF_HUB_OFFLINE=1 it is read from the Hugging Face cache)"
            )
        missing = []
    else:
        gdrive = zoo[name]["gdrive_id"]
        paths = robustbench_checkpoint_paths(
            cache, dataset, threat, name, len(gdrive) if isinstance(gdrive, list) else 0
        )
        missing = [path for path in paths if not path.is_file()]
    if missing and not download:
        raise AdvkitError(
            f"{spec} is not in the teacher cache: put its RobustBench checkpoint at {missing[0]} "
            "(the file robustbench.utils.load_model saves under its model_dir), choose the cache "
            "with --teacher-cache, or pass --download to fetch it"
        )
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise AdvkitError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, so RobustBench's torch.load could run code "
            "from a checkpoint; unset it to load a RobustBench teacher"
        )
    try:
        return load_model(name, model_dir=str(cache), dataset=dataset, threat_model=threat)
    except Exception as exc:  # gdown, requests, huggingface_hub, torch.load and load_state_dict fail with many types
        file = _torch_load_file(exc)
        if file is not None:
            raise load_failure(exc, f"{spec}: cached checkpoint", file) from None
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        if missing:
            raise AdvkitError(
                f"{spec} could not be downloaded ({reason}); put its checkpoint at {missing[0]} instead"
            ) from None
        raise AdvkitError(f"{spec} could not be loaded from the teacher cache {cache}: {reason}") from None


def _torch_load_file(exc: BaseException) -> Any:
    """What ``torch.load`` was reading if ``exc`` was raised inside it, else None.

    RobustBench reads its checkpoints itself; this tells a damaged or unsafe file (described by
    :func:`load_failure`) from download and architecture errors, whatever type the exception has.
    """
    load_code = inspect.unwrap(torch.load).__code__
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is load_code:
            return frame.tb_frame.f_locals.get("f")
        frame = frame.tb_next
    return None


# --------------------------------------------------------------------------------------------- timm
def _timm_pretrained(name: str, spec: str) -> nn.Module:
    """timm's pretrained weights, fed with the normalisation they were trained with."""
    timm = import_timm()

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AdvkitError(f"--teacher {spec}: timm has no model '{name}'{hint}")
    problem = timm_hub_problem()
    if problem is not None:
        raise AdvkitError(
            f"--teacher {spec}: timm's pretrained weights come through the Hugging Face hub, and {problem}; "
            f"or give a weights file: timm:{name}@FILE"
        )
    try:
        network = timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub errors come in many types (offline, missing weights, gated repos)
        raise AdvkitError(
            f"--teacher {spec}: timm could not load pretrained weights ({_first_line(exc)}); "
            f"offline, give a weights file instead: timm:{name}@FILE"
        ) from None
    config = network.pretrained_cfg
    return NormalizedModel(network, tuple(config["mean"]), tuple(config["std"]))


# --------------------------------------------------------------------------------------------- files
def _path_teacher(path: Path, info: Any, arch: str | None) -> nn.Module:
    if path.is_dir():
        checkpoint = next((path / name for name in ("best.pt", "last.pt") if (path / name).is_file()), None)
        if checkpoint is None:
            raise AdvkitError(f"teacher directory {path} holds no best.pt or last.pt (is it an advkit run directory?)")
        return _advkit_teacher(checkpoint, info)
    if not path.exists():
        raise AdvkitError(
            f"teacher {path} not found; expected robustbench:NAME, timm:NAME, an advkit run "
            "directory or a checkpoint file"
        )
    state = safe_load(path, "teacher checkpoint")
    if isinstance(state, dict) and "model" in state and "dataset_info" in state:
        return _advkit_teacher(path, info)
    if arch is None:
        raise AdvkitError(
            f"teacher {path} is a plain state_dict: name its architecture with --teacher-arch "
            "(e.g. resnet18, wrn-34-10, small-cnn)"
        )
    return _load_weights(build_model(arch, info), state, path, arch)


def _file_teacher(path: Path, info: Any, arch: str) -> nn.Module:
    return _load_weights(build_model(arch, info), safe_load(path, "teacher checkpoint"), path, arch)


def _advkit_teacher(path: Path, info: Any) -> nn.Module:
    model, _, teacher_info = load_trained_model(path)
    if tuple(teacher_info.input_shape) != tuple(info.input_shape) or teacher_info.num_classes != info.num_classes:
        raise AdvkitError(
            f"teacher {path} was trained on {teacher_info.name} ({teacher_info.num_classes} classes, "
            f"inputs {tuple(teacher_info.input_shape)}), which does not match {info.name} "
            f"({info.num_classes} classes, inputs {tuple(info.input_shape)})"
        )
    return model


def _load_weights(model: NormalizedModel, state: Any, path: Path, arch: str) -> NormalizedModel:
    """Load a plain state_dict (optionally under 'state_dict' or 'model', 'module.' prefixes stripped).

    The weights may be the whole advkit model or only its network (then they are assumed trained on
    inputs normalised with the dataset's mean/std, advkit's convention).
    """
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise AdvkitError(f"teacher {path} holds no state_dict of tensors")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    target = model if any(key.startswith("net.") for key in state) else model.net
    load_state_dict_or_explain(target, state, f"teacher {path}: weights do not fit architecture '{arch}'")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
