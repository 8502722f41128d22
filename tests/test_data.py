"""Datasets, the seeded validation split and the batched loader, on small files written in the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import advkit.data.datasets as data
from advkit.data import (
    DIGITS_INFO,
    ArrayDataset,
    BatchLoader,
    DatasetInfo,
    augment_batch,
    default_val_size,
    load_dataset,
    read_idx,
    to_float,
)
from advkit.errors import AdvkitError

CROP_INFO = DatasetInfo("toy", 10, (1, 6, 6), (0.5,), (0.25,), 2, True)


# --- helpers writing the real file formats -------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: two zero bytes, type code, ndim, big-endian uint32 dims, big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def indexed_images(n: int, size: int = 28) -> np.ndarray:
    """Images whose first pixel is their own index, so a split can be traced back to the source rows."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)
    return images


def write_mnist_layout(folder: Path, n_train: int, n_test: int, suffix: str = "") -> tuple[np.ndarray, np.ndarray]:
    train, test = indexed_images(n_train), indexed_images(n_test)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", test)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) % 10).astype(np.uint8))
    return train, test


def cifar_rows(n: int, start: int) -> np.ndarray:
    """N×3072 rows laid out as CIFAR does (1024 red, 1024 green, 1024 blue, each row-major)."""
    rows = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    rows[:, 0] = 10
    rows[:, 1] = 20
    rows[:, 2] = 30
    rows[:, 0, 0, 1] = np.arange(start, start + n)  # red channel, row 0, column 1: the example's index
    return rows.reshape(n, 3072)


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 3, protocol: int = 2) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": [(i + j) % 10 for j in range(per_batch)],
            "data": cifar_rows(per_batch, (i - 1) * per_batch),
            "filenames": [f"img{j}.png" for j in range(per_batch)],
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    test = {
        "batch_label": "testing batch 1 of 1",
        "labels": [7] * n_test,
        "data": cifar_rows(n_test, 100),
        "filenames": [f"t{j}.png" for j in range(n_test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=protocol))
    meta = {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))


def rewrite_cifar_batch(path: Path, **changes: object) -> None:
    """Replace entries of a CIFAR batch this module wrote (a trusted file, so plain pickle may read it)."""
    batch = pickle.loads(path.read_bytes())
    batch.update(changes)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar100(root: Path, train_labels: list[int], test_labels: list[int]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir()
    for name, labels in (("train", train_labels), ("test", test_labels)):
        entry = {b"data": cifar_rows(len(labels), 0), b"fine_labels": labels, b"coarse_labels": [0] * len(labels)}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [], b"coarse_label_names": []}))


def tensor_dataset(n: int, channels: int = 1, size: int = 6) -> ArrayDataset:
    generator = torch.Generator().manual_seed(n)
    x = torch.randint(1, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)
    return ArrayDataset(x, torch.arange(n, dtype=torch.int64))


# --- conversions and sizes -----------------------------------------------------------------------------------


def test_to_float_scales_uint8_and_passes_float_through() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    out = to_float(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([0.0, 0.2, 1.0]))
    floats = torch.tensor([0.25, 0.5])
    assert torch.equal(to_float(floats), floats)


def test_default_val_size_is_ten_percent_capped_at_1000() -> None:
    assert default_val_size(50_000) == 1000
    assert default_val_size(1437) == 143
    assert default_val_size(5) == 1


# --- idx files, MNIST and Fashion-MNIST ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_plain_and_gzipped(tmp_path: Path, suffix: str) -> None:
    images = indexed_images(4, size=5)
    write_idx(tmp_path / f"images{suffix}", images)
    wide = np.array([[1, -2, 70000]], dtype=np.int32)
    write_idx(tmp_path / f"ints{suffix}", wide)
    assert np.array_equal(read_idx(tmp_path / f"images{suffix}"), images)
    assert np.array_equal(read_idx(tmp_path / f"ints{suffix}"), wide)  # big-endian int32 decoded


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(AdvkitError, match="bad idx magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", indexed_images(3, size=4))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(AdvkitError, match="header says"):
        read_idx(tmp_path / "short")


def test_mnist_loads_torchvision_layout(tmp_path: Path) -> None:
    train, test = write_mnist_layout(tmp_path / "MNIST" / "raw", 30, 7, suffix=".gz")
    splits = load_dataset("mnist", tmp_path, val_size=5)
    assert splits.info.input_shape == (1, 28, 28) and splits.info.crop_padding == 0 and not splits.info.flip
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape == (25, 1, 28, 28)
    assert torch.equal(splits.test.x[:, 0], torch.from_numpy(test))
    assert torch.equal(splits.test.y, torch.arange(7) % 10)
    # every training row comes back once, across train and val, with its own label
    rows = torch.cat([splits.train.x, splits.val.x])[:, 0, 0, 0].long()
    assert sorted(rows.tolist()) == list(range(30))
    assert torch.equal(torch.cat([splits.train.y, splits.val.y]), rows % 10)
    assert torch.equal(torch.cat([splits.train.x, splits.val.x])[:, 0], torch.from_numpy(train)[rows])


def test_fashion_mnist_prefers_data_dir_over_debian_package(tmp_path: Path) -> None:
    write_mnist_layout(tmp_path / "FashionMNIST" / "raw", 12, 4)
    splits = load_dataset("fashion-mnist", tmp_path, val_size=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 4)
    assert splits.info.name == "fashion-mnist" and splits.info.num_classes == 10


def test_an_explicit_data_dir_holding_the_idx_files_wins_over_the_debian_copy(tmp_path: Path) -> None:
    write_mnist_layout(tmp_path / "mine", 12, 4)  # the four files right in the folder
    splits = load_dataset("fashion-mnist", tmp_path / "mine", val_size=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 2, 4)
    with pytest.raises(AdvkitError, match=r"--data-dir is explicit, so the Debian package's copy is not used"):
        load_dataset("fashion-mnist", tmp_path / "empty")


def test_fashion_mnist_missing_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "debian_fashion_mnist_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdvkitError, match=r"apt-get install dataset-fashion-mnist.*--download"):
        load_dataset("fashion-mnist", "data")


@pytest.mark.skipif(
    data.debian_fashion_mnist_dir() is None, reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default --data-dir (data), which holds no copy
    splits = load_dataset("fashion-mnist", "data")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (59_000, 1000, 10_000)
    assert torch.equal(splits.test.y.bincount(), torch.full((10,), 1000))
    assert abs(to_float(splits.test.x).mean().item() - 0.286) < 0.01


# --- CIFAR, SVHN, Tiny-ImageNet ------------------------------------------------------------------------------


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", tmp_path, val_size=2, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 3)
    x = splits.test.x
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32)
    # the planes are R, G, B and rows are row-major: the index sits in red, row 0, column 1
    assert (x[:, 1] == 20).all() and (x[:, 2] == 30).all()
    assert x[:, 0, 0, 1].tolist() == [100, 101, 102] and (x[:, 0, 1:] == 10).all()
    index = torch.cat([splits.train.x, splits.val.x])[:, 0, 0, 1].long()
    labels = torch.cat([splits.train.y, splits.val.y])
    assert sorted(index.tolist()) == list(range(10))
    assert torch.equal(labels, (index // 2 + 1 + index % 2) % 10)  # batch i, position j has label (i + j) % 10
    assert splits.info.crop_padding == 4 and splits.info.flip and splits.info.mean[0] == 0.4914


def test_cifar100_reads_fine_labels_with_bytes_keys(tmp_path: Path) -> None:
    write_cifar100(tmp_path, list(range(90, 96)), [90, 91])
    splits = load_dataset("cifar100", tmp_path, val_size=1)
    assert splits.info.num_classes == 100
    assert splits.test.y.tolist() == [90, 91]
    assert sorted(torch.cat([splits.train.y, splits.val.y]).tolist()) == list(range(90, 96))


def test_corrupted_cifar_file_is_a_user_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(AdvkitError, match="data_batch_3 is unreadable"):
        load_dataset("cifar10", tmp_path)


def svhn_arrays(n: int) -> dict[str, np.ndarray]:
    """The variables of an SVHN .mat file: X is H × W × C × N as in the official files, y is N × 1 in 1..10."""
    images = np.zeros((32, 32, 3, n), dtype=np.uint8)
    images[2, 7, 1, :] = np.arange(1, n + 1)  # green channel, row 2, column 7
    labels = ((np.arange(n) + 7) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 8, 9, 10 (= digit 0), 1, ...
    return {"X": images, "y": labels}


def write_svhn(root: Path, n_train: int = 5, n_test: int = 3) -> None:
    import scipy.io

    for split, n in (("train", n_train), ("test", n_test)):
        scipy.io.savemat(str(root / f"{split}_32x32.mat"), svhn_arrays(n))


def test_svhn_mat_files(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    splits = load_dataset("svhn", tmp_path, val_size=0)
    assert splits.test.x.shape == (3, 3, 32, 32)
    assert splits.test.x[:, 1, 2, 7].tolist() == [1, 2, 3] and splits.test.x.sum() == 6
    assert splits.test.y.tolist() == [8, 9, 0]
    assert len(splits.val) == 0 and splits.info.crop_padding == 0 and not splits.info.flip


def write_jpeg(path: Path, value: int, channels: int = 3) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L" if channels == 1 else "RGB", (64, 64), value if channels == 1 else (value,) * 3).save(
        path, format="JPEG", quality=95
    )


@pytest.mark.parametrize("refoldered", [False, True])
def test_tiny_imagenet_layouts(tmp_path: Path, refoldered: bool) -> None:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # classes are numbered in sorted order: n01 -> 0, n02 -> 1
    values = {"n01": 40, "n02": 200}
    for wnid in wnids:
        for j in range(3):
            folder = root / "train" / wnid if refoldered else root / "train" / wnid / "images"
            write_jpeg(folder / f"{wnid}_{j}.JPEG", values[wnid], channels=1 if j == 0 else 3)
    if refoldered:
        write_jpeg(root / "val" / "n02" / "val_0.JPEG", 200)
        write_jpeg(root / "val" / "n01" / "val_1.JPEG", 40)
    else:
        write_jpeg(root / "val" / "images" / "val_0.JPEG", 200)
        write_jpeg(root / "val" / "images" / "val_1.JPEG", 40)
        (root / "val" / "val_annotations.txt").write_text(
            "val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn01\t0\t0\t63\t63\n"
        )
    splits = load_dataset("tiny-imagenet", tmp_path, val_size=2)
    assert splits.info.input_shape == (3, 64, 64) and splits.info.num_classes == 200
    assert splits.train.x.shape == (4, 3, 64, 64)  # grayscale JPEGs come back as RGB
    test_means = splits.test.x.float().mean(dim=(1, 2, 3))
    expected = {0: 40, 1: 200}
    assert sorted(splits.test.y.tolist()) == [0, 1]
    for mean, label in zip(test_means.tolist(), splits.test.y.tolist(), strict=True):
        assert abs(mean - expected[label]) < 3
    for x, label in zip(
        torch.cat([splits.train.x, splits.val.x]), torch.cat([splits.train.y, splits.val.y]), strict=True
    ):
        assert abs(x.float().mean().item() - expected[int(label)]) < 3


# --- damaged and hostile files ------------------------------------------------------------------------------


class RunsShell:
    """Unpickling this object runs a shell command that creates ``marker``: proof that a reader executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar_batch_that_would_run_code_is_refused(tmp_path: Path, protocol: int) -> None:
    write_cifar10(tmp_path, protocol=protocol)
    marker, batch = tmp_path / "executed", tmp_path / "cifar-10-batches-py" / "data_batch_2"
    hostile = pickle.dumps(
        {"data": cifar_rows(2, 0), "labels": [0, 1], "filenames": RunsShell(marker)}, protocol=protocol
    )
    batch.write_bytes(hostile)
    with pytest.raises(AdvkitError) as error:
        load_dataset("cifar10", tmp_path)
    assert str(error.value) == (
        f"{batch} is not a CIFAR batch: it refers to Python object 'posix.system', which "
        "advkit will not load (unpickling it could execute code)"
    )
    assert not marker.exists()
    pickle.loads(hostile)  # the payload is live: a plain unpickler does run it
    assert marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_batches_load_at_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    write_cifar10(tmp_path, protocol=protocol)
    rewrite_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_5", labels=np.array([3, 4]))  # numpy labels
    splits = load_dataset("cifar10", tmp_path, val_size=0)
    assert splits.test.x[:, 0, 0, 1].tolist() == [100, 101, 102] and splits.test.y.tolist() == [7, 7, 7]
    assert splits.train.y[-2:].tolist() == [3, 4] and len(splits.train) == 10


@pytest.mark.parametrize(
    "file, changes, message",
    [
        ("test_batch", {"labels": [7, 10, 7]}, "holds 1 label outside 0..9 (the first is 10 at position 1)"),
        ("data_batch_1", {"labels": [-1, 3]}, "holds 1 label outside 0..9 (the first is -1 at position 0)"),
        (
            "data_batch_4",
            {"labels": [1]},
            "is not a CIFAR batch: it holds 2 images but labels of shape (1,); expected 2 labels",
        ),
        (
            "data_batch_5",
            {"data": cifar_rows(2, 0).reshape(-1)[:-5]},
            "is not a CIFAR batch: its 'data' holds 6139 bytes, not a whole number of 3072-byte",
        ),
    ],
    ids=["label-10", "label-minus-1", "labels-short", "data-cut"],
)
def test_inconsistent_cifar_batch_is_a_user_error(tmp_path: Path, file: str, changes: dict, message: str) -> None:
    write_cifar10(tmp_path)
    rewrite_cifar_batch(tmp_path / "cifar-10-batches-py" / file, **changes)
    with pytest.raises(AdvkitError) as error:
        load_dataset("cifar10", tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'cifar-10-batches-py' / file} {message}")
    assert "\n" not in str(error.value)


def test_cifar100_labels_must_be_below_100(tmp_path: Path) -> None:
    write_cifar100(tmp_path, [0, 99, 100, 150], [5])
    with pytest.raises(
        AdvkitError,
        match=r"cifar-100-python/train holds 2 labels outside 0\.\.99 \(the first is 100 "
        r"at position 2\)",
    ):
        load_dataset("cifar100", tmp_path)


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_labels_outside_the_classes_are_refused(tmp_path: Path, dataset: str, folder: str) -> None:
    write_mnist_layout(tmp_path / folder, 12, 4)
    labels = (np.arange(4) % 10).astype(np.uint8)
    labels[2] = 255
    write_idx(tmp_path / folder / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(AdvkitError) as error:
        load_dataset(dataset, tmp_path)
    assert str(error.value) == (
        f"{tmp_path / folder / 't10k-labels-idx1-ubyte'} holds 1 label outside 0..9 (the "
        "first is 255 at position 2); the file is corrupted or from another dataset"
    )


def svhn_variables(n: int, **changes: np.ndarray) -> dict[str, np.ndarray]:
    variables = {**svhn_arrays(n), **changes}
    return {key: value for key, value in variables.items() if value is not None}


@pytest.mark.parametrize(
    "variables, message",
    [
        (b"", "is unreadable or corrupted"),
        (bytes(range(256)) * 2, "is unreadable or corrupted"),
        (
            svhn_variables(3, X=None, images=np.zeros((32, 32, 3, 3), dtype=np.uint8)),
            "is not an SVHN file: it needs variables 'X' (images) and 'y' (labels), found y, images",
        ),
        (
            svhn_variables(3, X=np.zeros((3, 3, 32, 32), dtype=np.uint8)),
            "is not an SVHN file: X has shape (3, 3, 32, 32) and y 3 labels; expected X 32×32×3×N and N labels",
        ),
        (svhn_variables(3, X=np.zeros((32, 32, 3), dtype=np.uint8)), "is not an SVHN file: X has shape (32, 32, 3)"),
        (
            svhn_variables(3, y=np.array([[1], [2]], dtype=np.uint8)),
            "is not an SVHN file: X has shape (32, 32, 3, 3) and y 2 labels",
        ),
        (
            svhn_variables(3, y=np.array([[1], [11], [2]], dtype=np.uint8)),
            "holds 1 label outside 0..10 (the first is 11",
        ),
    ],
    ids=["empty", "random-bytes", "no-X", "N-C-H-W", "3-D", "labels-short", "label-11"],
)
def test_damaged_svhn_file_is_a_user_error(tmp_path: Path, variables: bytes | dict, message: str) -> None:
    import scipy.io

    write_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    if isinstance(variables, bytes):
        path.write_bytes(variables)
    else:
        scipy.io.savemat(str(path), variables)
    with pytest.raises(AdvkitError) as error:
        load_dataset("svhn", tmp_path)
    assert str(error.value).startswith(f"{path} {message}") and "\n" not in str(error.value)


# --- errors --------------------------------------------------------------------------------------------------


def test_missing_dataset_names_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(AdvkitError) as info:
        load_dataset("cifar10", tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "--download" in message
    with pytest.raises(AdvkitError, match=r"tiny-imagenet-200\.zip"):
        load_dataset("tiny-imagenet", tmp_path, download=True)  # torchvision cannot fetch it: say how


def test_unknown_dataset_suggests_the_closest_name(tmp_path: Path) -> None:
    with pytest.raises(AdvkitError, match=r"did you mean 'cifar100'.*fashion-mnist"):
        load_dataset("cifar-100", tmp_path)


@pytest.mark.parametrize("val_size", [1438, 2000, -1, 1.5, 1.0, "ten"])
def test_bad_val_size(val_size: object) -> None:
    with pytest.raises(AdvkitError, match="--val-size"):
        load_dataset("digits", "unused", val_size=val_size)  # type: ignore[arg-type]


# --- splits --------------------------------------------------------------------------------------------------


def test_val_split_is_disjoint_seeded_and_held_out_from_train(tmp_path: Path) -> None:
    write_mnist_layout(tmp_path / "mnist", 40, 5)

    def val_rows(seed: int, val_size: float | int) -> tuple[set[int], set[int]]:
        splits = load_dataset("mnist", tmp_path, val_size=val_size, seed=seed)
        return set(splits.val.x[:, 0, 0, 0].tolist()), set(splits.train.x[:, 0, 0, 0].tolist())

    val, train = val_rows(0, 10)
    assert len(val) == 10 and len(train) == 30 and not val & train and val | train == set(range(40))
    assert val_rows(0, 10) == (val, train)
    assert val_rows(1, 10)[0] != val
    assert len(val_rows(0, 0.25)[0]) == 10
    torch.manual_seed(0)
    state = torch.get_rng_state()
    val_rows(0, 10)
    assert torch.equal(torch.get_rng_state(), state)  # the split never touches the global RNG


def test_digits_test_split_is_fixed_and_independent_of_the_run_seed() -> None:
    a = load_dataset("digits", "unused", seed=0)
    b = load_dataset("digits", "unused", seed=5)
    assert a.info == DIGITS_INFO and a.info.input_shape == (1, 8, 8)
    assert (len(a.train) + len(a.val), len(a.test)) == (1438, 359)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.x, b.val.x)
    assert a.train.x.dtype == torch.float32 and a.train.x.min() == 0 and a.train.x.max() == 1
    # train+val is the same pool for every seed
    pool_a = sorted(map(tuple, torch.cat([a.train.x, a.val.x]).flatten(1).tolist()))
    pool_b = sorted(map(tuple, torch.cat([b.train.x, b.val.x]).flatten(1).tolist()))
    assert pool_a == pool_b


# --- the loader ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_yields_every_example_once(shuffle: bool) -> None:
    dataset = tensor_dataset(23)
    loader = BatchLoader(dataset, 5, shuffle=shuffle, drop_last=False, seed=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert (seen.tolist() == list(range(23))) != shuffle
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        assert torch.equal(x, to_float(dataset.x[y]))  # without augmentation each image is its own


def test_loader_drop_last() -> None:
    loader = BatchLoader(tensor_dataset(23), 5, shuffle=True, drop_last=True)
    assert len(loader) == 4 and all(len(y) == 5 for _, y in loader)


def test_augment_batch_crop_is_a_shifted_copy() -> None:
    x = torch.randint(1, 256, (2, 3, 5, 7), dtype=torch.uint8)
    out = augment_batch(x, torch.tensor([1, 4]), torch.tensor([6, 4]), torch.tensor([False, False]), 4)
    padded = torch.zeros(3, 13, 15, dtype=torch.uint8)
    padded[:, 4:9, 4:11] = x[0]
    assert torch.equal(out[0], padded[:, 1:6, 6:13])  # shifted down 3 and left 2, zeros come in
    assert (out[0, :, :3] == 0).all() and (out[0, :, 3:, -2:] == 0).all()
    assert torch.equal(out[1], x[1])  # offset == padding: no shift


def test_augment_batch_flip_really_flips() -> None:
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4)
    out = augment_batch(x, torch.tensor([2, 2]), torch.tensor([2, 2]), torch.tensor([True, False]), 2)
    assert out[0, 0, 0].tolist() == [3, 2, 1, 0]
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    shifted = augment_batch(x, torch.tensor([2]), torch.tensor([3]), torch.tensor([True]), 2)
    assert shifted[0, 0, 0].tolist() == [0, 3, 2, 1]  # the crop shifted left by one is [1, 2, 3, 0], mirrored


def crops_of(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop and mirrored crop of ``image``'s zero-padded copy, computed by slicing."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding : padding + h, padding : padding + w] = image
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]
    return crops + [crop.flip(-1) for crop in crops]


def test_loader_augmentation_is_crop_and_flip_seeded_by_seed_and_epoch() -> None:
    dataset = tensor_dataset(64)
    loader = BatchLoader(dataset, 16, shuffle=True, drop_last=False, augment=CROP_INFO, seed=7)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    loader.set_epoch(2)
    epoch2 = list(loader)
    assert torch.equal(torch.get_rng_state(), state)  # never the global RNG

    identical, flipped = 0, 0
    for x, y in epoch2:
        for image, label in zip(x, y, strict=True):
            source = to_float(dataset.x[label])
            candidates = crops_of(source, 2)
            matches = [k for k, crop in enumerate(candidates) if torch.equal(crop, image)]
            assert matches, "an augmented image is not a crop/flip of its source"
            identical += torch.equal(image, source)
            flipped += matches[0] >= 25
    assert identical < 16 and 10 < flipped < 54  # augmentation really happens, flips about half the time

    again = BatchLoader(dataset, 16, shuffle=True, drop_last=False, augment=CROP_INFO, seed=7)
    again.set_epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch2, again, strict=True))
    again.set_epoch(3)
    assert not torch.equal(torch.cat([x for x, _ in again]), torch.cat([x for x, _ in epoch2]))
    other_seed = BatchLoader(dataset, 16, shuffle=True, drop_last=False, augment=CROP_INFO, seed=8)
    other_seed.set_epoch(2)
    assert not torch.equal(torch.cat([y for _, y in other_seed]), torch.cat([y for _, y in epoch2]))


def test_loader_without_crop_or_flip_leaves_images_alone() -> None:
    dataset = tensor_dataset(10)
    loader = BatchLoader(dataset, 4, shuffle=True, drop_last=False, augment=DIGITS_INFO)
    for x, y in loader:
        assert torch.equal(x, to_float(dataset.x[y]))


def test_float_dataset_passes_through_loader() -> None:
    splits = load_dataset("digits", "unused", val_size=100)
    x, y = next(iter(BatchLoader(splits.val, 100, shuffle=False, drop_last=False)))
    assert torch.equal(x, splits.val.x) and torch.equal(y, splits.val.y)
