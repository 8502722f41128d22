"""Datasets held in memory as tensors, their file formats, and a seeded train/val split.

Every dataset is read once into uint8 (or float32 for ``digits``) tensors; ``loader.BatchLoader`` then
batches and augments them on the training device.

File formats are parsed here rather than through torchvision's dataset classes: torchvision is used only
to download (it verifies checksums then), while reading stays fast (no checksum of 170 MB per start) and
testable on small files written in the same formats.

Augmentation per dataset: CIFAR-10/100 and Tiny-ImageNet use random crop (pad 4) + flip, the standard
adversarial-training recipe (methods-spec §1). SVHN uses none: digits are not flip-invariant, and
adversarial-training work on SVHN commonly trains without augmentation. MNIST, Fashion-MNIST and digits use
none.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import pickle
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import AdvkitError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the loader need to know about a dataset; stored in checkpoints."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # 0 = no random crop
    flip: bool  # random horizontal flip


@dataclass
class ArrayDataset:
    """Images (N×C×H×W, uint8 in 0..255 or float32 in [0, 1]) and int64 labels, in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"ArrayDataset needs x N×C×H×W and y N, got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return self.y.shape[0]

    def subset(self, index: torch.Tensor) -> ArrayDataset:
        """The examples at ``index`` (a copy, so the parent can be freed)."""
        return ArrayDataset(self.x[index], self.y[index])


@dataclass
class Splits:
    """Train / validation / test parts of one dataset; validation is held out from the training set."""

    info: DatasetInfo
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset


CIFAR10_INFO = DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), 4, True)
CIFAR100_INFO = DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True)
SVHN_INFO = DatasetInfo("svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 0, False)
TINY_IMAGENET_INFO = DatasetInfo(
    "tiny-imagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), 4, True
)
MNIST_INFO = DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), 0, False)
FASHION_MNIST_INFO = DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), 0, False)
DIGITS_INFO = DatasetInfo("digits", 10, (1, 8, 8), (0.3053,), (0.3760,), 0, False)

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "svhn", "tiny-imagenet", "mnist", "fashion-mnist", "digits")

# The digits test split is fixed by this seed, never by the run seed, so every run is scored on the same images.
DIGITS_SPLIT_SEED = 20240101
DEFAULT_DATA_DIR = "data"  # TrainConfig's data_dir; only there may a system-wide copy stand in
DEBIAN_FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 is divided by 255, floating point passes through."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255)
    return x.to(torch.float32)


def default_val_size(n_train: int) -> int:
    """Validation examples held out when none are asked for: 10% of small sets, at most 1000."""
    return min(1000, max(1, n_train // 10))


def load_dataset(
    name: str,
    data_dir: str | Path,
    *,
    val_size: float | int | None = None,
    seed: int = 0,
    download: bool = False,
    train_size: int | None = None,
) -> Splits:
    """Load ``name`` from ``data_dir`` and hold out a seeded validation split from its training set.

    ``val_size`` is a count (int) or a fraction of the training set (float in [0, 1)); ``None`` means
    :func:`default_val_size`. ``train_size`` keeps a seeded subset of what remains after the validation
    split is held out (``None``: all of it). Both come from one ``torch.Generator(seed)`` permutation, never
    the global RNG, so the subsets for growing ``train_size`` are nested and never touch the validation split.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in LOADERS:
        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AdvkitError(f"unknown dataset '{name}'{hint}; choose one of: {', '.join(DATASETS)}")
    info, loader = LOADERS[key]
    full_train, test = loader(Path(data_dir).expanduser(), download)
    n_val = _val_count(val_size, len(full_train))
    n_train = len(full_train) - n_val if train_size is None else _train_count(train_size, len(full_train), n_val)
    order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:n_val].sort().values, order[n_val : n_val + n_train].sort().values
    return Splits(info, full_train.subset(train_index), full_train.subset(val_index), test)


def _val_count(val_size: float | int | None, n_train: int) -> int:
    """Turn a count or fraction into a count, rejecting sizes that leave no training data."""
    if val_size is None:
        count = default_val_size(n_train)
    elif isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise AdvkitError(f"--val-size must be a count >= 0 or a fraction in [0, 1), got {val_size!r}")
    elif isinstance(val_size, float):
        if not 0 <= val_size < 1:
            raise AdvkitError(f"--val-size {val_size}: a fraction must lie in [0, 1); pass an integer for a count")
        count = int(round(val_size * n_train))
    elif val_size >= 0:
        count = val_size
    else:
        raise AdvkitError(f"--val-size must be a count >= 0 or a fraction in [0, 1), got {val_size}")
    if count >= n_train:
        raise AdvkitError(
            f"--val-size {val_size} holds out {count} of {n_train} training examples and leaves none "
            f"to train on; use a count below {n_train} or a fraction below 1"
        )
    return count


def _train_count(train_size: int, n_total: int, n_val: int) -> int:
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise AdvkitError(f"--train-size must be a count of at least 1, got {train_size!r}")
    if train_size > n_total - n_val:
        raise AdvkitError(
            f"--train-size {train_size} is more than the {n_total - n_val} training examples left after "
            f"holding out {n_val} for validation; use at most {n_total - n_val}"
        )
    return train_size


def _missing(name: str, data_dir: Path, expected: Path | str) -> AdvkitError:
    return AdvkitError(
        f"dataset '{name}' not found in {data_dir}: expected {expected} "
        f"(pass --download to fetch it, or --data-dir to point at it)"
    )


def _download(name: str, data_dir: Path, fetch: Callable[[], object]) -> None:
    """Run a torchvision download, turning network and checksum failures into one-line errors."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fetch()
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdvkitError(f"could not download dataset '{name}' into {data_dir}: {first}") from None


def _unreadable(path: Path, exc: Exception) -> AdvkitError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return AdvkitError(f"{path} is unreadable or corrupted ({first}); delete it and fetch it again with --download")


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Refuse labels outside 0..num_classes-1 at load time: training would otherwise fail mid-epoch on them."""
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if outside.size:
        raise AdvkitError(
            f"{path} holds {outside.size} label{'s' if outside.size > 1 else ''} outside "
            f"0..{num_classes - 1} (the first is {labels[outside[0]]} at position {outside[0]}); "
            "the file is corrupted or from another dataset"
        )


# --- CIFAR ---------------------------------------------------------------------------------------------------

CIFAR_IMAGE_BYTES = 3 * 32 * 32
# Every Python object a CIFAR batch pickle may name, as module.name exactly as pickles spell them. Nothing else
# is ever imported or called while a batch is read, so a hostile file under --data-dir cannot run code.
CIFAR_PICKLE_GLOBALS = frozenset(
    {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",  # arrays (numpy 1, numpy 2)
        "numpy.core.numeric._frombuffer",
        "numpy._core.numeric._frombuffer",  # arrays at pickle protocol 5
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",  # numpy integers, e.g. relabelled files
        "numpy.ndarray",
        "numpy.dtype",
        "_codecs.encode",  # bytes as Python 3 writes them at protocols 0-2
        *(
            f"{module}.{name}"
            for module in ("builtins", "__builtin__")  # containers some protocols write by name
            for name in ("bytes", "bytearray", "set", "frozenset")
        ),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`CIFAR_PICKLE_GLOBALS`: arrays, strings, numbers, containers."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every global outside the allowlist before it is imported: a pickle calls what it names."""
        if f"{module}.{name}" not in CIFAR_PICKLE_GLOBALS:
            raise AdvkitError(
                f"{self.path} is not a CIFAR batch: it refers to Python object '{module}.{name}', "
                "which advkit will not load (unpickling it could execute code)"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle: ``data`` N×3072 uint8 (R, G, B planes) and N labels in [0, num_classes)."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, path).load()
    except AdvkitError:
        raise
    except Exception as exc:  # a malformed pickle fails with almost any type: stack underflow, codecs, MemoryError
        raise _unreadable(path, exc) from None
    try:
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        images = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise _unreadable(path, exc) from None
    if images.size % CIFAR_IMAGE_BYTES:
        raise AdvkitError(
            f"{path} is not a CIFAR batch: its 'data' holds {images.size} bytes, not a whole number "
            f"of {CIFAR_IMAGE_BYTES}-byte (3×32×32) images"
        )
    images = images.reshape(-1, 3, 32, 32)
    if labels.ndim != 1 or len(labels) != len(images):
        raise AdvkitError(
            f"{path} is not a CIFAR batch: it holds {len(images)} images but labels of shape "
            f"{labels.shape}; expected {len(images)} labels"
        )
    _check_labels(labels, num_classes, path)
    return images, labels


def _cifar(
    folder: str, train_files: tuple[str, ...], test_file: str, label_key: str, info: DatasetInfo, dataset_class: str
) -> Callable[[Path, bool], tuple[ArrayDataset, ArrayDataset]]:
    def load(data_dir: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
        root = data_dir / folder
        needed = [root / f for f in (*train_files, test_file)]
        if not all(p.is_file() for p in needed):
            if not download:
                raise _missing(info.name, data_dir, root)
            import torchvision.datasets

            _download(
                info.name, data_dir, lambda: getattr(torchvision.datasets, dataset_class)(str(data_dir), download=True)
            )
        parts = [_read_cifar_batch(p, label_key, info.num_classes) for p in needed]
        train_x = np.concatenate([x for x, _ in parts[:-1]])
        train_y = np.concatenate([y for _, y in parts[:-1]])
        return (
            ArrayDataset(torch.from_numpy(train_x), torch.from_numpy(train_y)),
            ArrayDataset(torch.from_numpy(parts[-1][0]), torch.from_numpy(parts[-1][1])),
        )

    return load


# --- SVHN ----------------------------------------------------------------------------------------------------


def _read_svhn(path: Path) -> ArrayDataset:
    """A torchvision-layout SVHN .mat file: X is 32×32×3×N uint8, y holds N labels 0..10 (10 stands for digit 0)."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(str(path))
    except (MatReadError, OSError, ValueError, TypeError, IndexError, NotImplementedError) as exc:  # seen on bad files
        raise _unreadable(path, exc) from None
    if "X" not in mat or "y" not in mat:
        raise AdvkitError(
            f"{path} is not an SVHN file: it needs variables 'X' (images) and 'y' (labels), found "
            f"{', '.join(k for k in mat if not k.startswith('__')) or 'none'}"
        )
    try:
        images, labels = np.asarray(mat["X"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (ValueError, TypeError) as exc:
        raise _unreadable(path, exc) from None
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise AdvkitError(
            f"{path} is not an SVHN file: X has shape {images.shape} and y {len(labels)} labels; "
            "expected X 32×32×3×N and N labels"
        )
    _check_labels(labels, 11, path)  # 0..10 in the file: both 0 and 10 stand for digit 0
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))), torch.from_numpy(labels % 10)
    )


def _load_svhn(data_dir: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    files = {"train": data_dir / "train_32x32.mat", "test": data_dir / "test_32x32.mat"}
    for split, path in files.items():
        if not path.is_file():
            if not download:
                raise _missing("svhn", data_dir, path)
            import torchvision.datasets

            _download(
                "svhn",
                data_dir,
                functools.partial(torchvision.datasets.SVHN, str(data_dir), split=split, download=True),
            )
    return _read_svhn(files["train"]), _read_svhn(files["test"])


# --- MNIST-style idx files -----------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (the MNIST format), gzipped or plain, into a numpy array in native byte order."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
            raise ValueError("bad idx magic number")
        dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
        shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
        data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"header says {shape} but the file holds {data.size} values")
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
        raise _unreadable(path, exc) from None
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder``, whichever exists (plain first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder(folders: list[Path]) -> dict[str, Path] | None:
    """The first folder holding all four MNIST-style idx files, as a role -> path map."""
    for folder in folders:
        found = {role: _idx_file(folder, stem) for role, stem in IDX_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def _read_idx_splits(files: dict[str, Path], num_classes: int) -> tuple[ArrayDataset, ArrayDataset]:
    def part(x_role: str, y_role: str) -> ArrayDataset:
        images, labels = read_idx(files[x_role]), read_idx(files[y_role])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise AdvkitError(
                f"{files[x_role]} and {files[y_role]} do not form an image set: "
                f"shapes {images.shape} and {labels.shape}, expected N×H×W and N"
            )
        _check_labels(labels, num_classes, files[y_role])
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1)
        return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)))

    return part("train_x", "train_y"), part("test_x", "test_y")


def _load_mnist(data_dir: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    folders = [data_dir, data_dir / "MNIST" / "raw", data_dir / "mnist"]
    files = _idx_folder(folders)
    if files is None:
        if not download:
            raise _missing("mnist", data_dir, f"{folders[1]}/{IDX_FILES['train_x']}[.gz] and the other idx files")
        import torchvision.datasets

        for train in (True, False):
            _download(
                "mnist",
                data_dir,
                functools.partial(torchvision.datasets.MNIST, str(data_dir), train=train, download=True),
            )
        files = _idx_folder(folders)
        assert files is not None, "torchvision's MNIST download left no idx files in MNIST/raw"
    return _read_idx_splits(files, MNIST_INFO.num_classes)


def debian_fashion_mnist_dir() -> Path | None:
    """Where the Debian package ``dataset-fashion-mnist`` put its idx files, if it is installed."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", DEBIAN_FASHION_MNIST_PACKAGE], capture_output=True, text=True, timeout=30, check=False
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        listing = []
    folders = [Path(line).parent for line in listing if Path(line).name.startswith(IDX_FILES["train_x"])]
    for folder in [*folders, DEBIAN_FASHION_MNIST_DIR]:
        if _idx_folder([folder]) is not None:
            return folder
    return None


def _load_fashion_mnist(data_dir: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    """The idx files in ``data_dir`` (itself, FashionMNIST/raw or fashion-mnist), else — only when
    ``data_dir`` is the default — the Debian package's copy: an explicit --data-dir always wins."""
    folders = [data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist"]
    files = _idx_folder(folders)
    default_dir = data_dir == Path(DEFAULT_DATA_DIR)
    if files is None and default_dir:
        debian = debian_fashion_mnist_dir()
        files = _idx_folder([debian]) if debian is not None else None
    if files is None:
        if not download:
            where = ", ".join(str(folder) for folder in folders)
            fallback = (
                f"nor from the Debian package: install it (apt-get install {DEBIAN_FASHION_MNIST_PACKAGE}), "
                if default_dir
                else "and --data-dir is explicit, so the Debian package's copy is not used: "
            )
            raise AdvkitError(
                f"dataset 'fashion-mnist' not found: no {IDX_FILES['train_x']}[.gz] and the other idx "
                f"files in {where}, {fallback}pass --download, or point --data-dir at the folder "
                "holding the four idx files"
            )
        import torchvision.datasets

        for train in (True, False):
            _download(
                "fashion-mnist",
                data_dir,
                functools.partial(torchvision.datasets.FashionMNIST, str(data_dir), train=train, download=True),
            )
        files = _idx_folder(folders)
        assert files is not None, "torchvision's FashionMNIST download left no idx files in FashionMNIST/raw"
    return _read_idx_splits(files, FASHION_MNIST_INFO.num_classes)


# --- Tiny-ImageNet -------------------------------------------------------------------------------------------


def _read_images(paths: list[Path]) -> torch.Tensor:
    """Decode image files to an N×3×H×W uint8 tensor (grayscale JPEGs are expanded to RGB)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                out.append(np.asarray(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as exc:
            raise _unreadable(path, exc) from None
    if len({img.shape for img in out}) > 1:
        raise AdvkitError(f"images under {paths[0].parent.parent} have different sizes; Tiny-ImageNet is 64×64")
    if not out:
        return torch.empty(0, 3, 64, 64, dtype=torch.uint8)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _class_images(folder: Path) -> list[Path]:
    """Images of one class folder: ``<wnid>/images/*.JPEG`` (official) or ``<wnid>/*.JPEG`` (re-foldered)."""
    base = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in base.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def _load_tiny_imagenet(data_dir: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    roots = [data_dir / "tiny-imagenet-200", data_dir / "tiny-imagenet", data_dir]
    root = next((r for r in roots if (r / "train").is_dir() and (r / "val").is_dir()), None)
    if root is None:
        raise AdvkitError(
            f"dataset 'tiny-imagenet' not found in {data_dir}: expected {roots[0]}/train and "
            f"{roots[0]}/val (it cannot be downloaded with --download: unzip "
            f"http://cs231n.stanford.edu/tiny-imagenet-200.zip into {data_dir}, or pass --data-dir)"
        )
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    label_of = {wnid: i for i, wnid in enumerate(wnids)}

    train_paths, train_labels = [], []
    for wnid in wnids:
        images = _class_images(root / "train" / wnid)
        train_paths += images
        train_labels += [label_of[wnid]] * len(images)

    val = root / "val"
    annotations = val / "val_annotations.txt"
    test_paths, test_labels = [], []
    if annotations.is_file():
        for line in annotations.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in label_of:
                raise AdvkitError(f"{annotations} names class {fields[1]}, which has no folder under {root / 'train'}")
            test_paths.append(val / "images" / fields[0])
            test_labels.append(label_of[fields[1]])
    else:
        for wnid in sorted(p.name for p in val.iterdir() if p.is_dir()):
            if wnid not in label_of:
                raise AdvkitError(f"{val / wnid} is a class with no folder under {root / 'train'}")
            images = _class_images(val / wnid)
            test_paths += images
            test_labels += [label_of[wnid]] * len(images)
    if not train_paths or not test_paths:
        raise AdvkitError(
            f"no images found under {root}/train or {root}/val: expected train/<wnid>/images/*.JPEG "
            f"and val/images/*.JPEG with val/val_annotations.txt (or val/<wnid>/*.JPEG)"
        )
    return (
        ArrayDataset(_read_images(train_paths), torch.tensor(train_labels, dtype=torch.int64)),
        ArrayDataset(_read_images(test_paths), torch.tensor(test_labels, dtype=torch.int64)),
    )


# --- scikit-learn digits -------------------------------------------------------------------------------------


def _load_digits(data_dir: Path, download: bool) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's embedded 8×8 digits (values 0..16 -> [0, 1]), split 80/20 by a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = len(y) // 5
    full = ArrayDataset(x, y)
    return full.subset(order[n_test:].sort().values), full.subset(order[:n_test].sort().values)


LOADERS: dict[str, tuple[DatasetInfo, Callable[[Path, bool], tuple[ArrayDataset, ArrayDataset]]]] = {
    "cifar10": (
        CIFAR10_INFO,
        _cifar(
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test_batch",
            "labels",
            CIFAR10_INFO,
            "CIFAR10",
        ),
    ),
    "cifar100": (
        CIFAR100_INFO,
        _cifar("cifar-100-python", ("train",), "test", "fine_labels", CIFAR100_INFO, "CIFAR100"),
    ),
    "svhn": (SVHN_INFO, _load_svhn),
    "tiny-imagenet": (TINY_IMAGENET_INFO, _load_tiny_imagenet),
    "mnist": (MNIST_INFO, _load_mnist),
    "fashion-mnist": (FASHION_MNIST_INFO, _load_fashion_mnist),
    "digits": (DIGITS_INFO, _load_digits),
}
