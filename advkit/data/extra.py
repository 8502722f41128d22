"""Generated training data, memory-mapped: ``.npz`` files in the format of the DM-Improves-AT and Gowal et
al. releases (``image``: uint8 N×H×W×C, ``label``: integer N), one file or a folder of shards.

Nothing is loaded whole: an uncompressed ``.npz`` (``np.savez``) stores each array as a plain ``.npy``
member, so its bytes are mapped straight from the file (a 50M-image set is about 150 GB). A compressed
member (``np.savez_compressed``) cannot be mapped and is refused with the command that converts it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AdvkitError
from .datasets import DatasetInfo

ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def memory_map_member(path: Path, member: str) -> np.ndarray:
    """The array ``member`` of an uncompressed ``.npz`` as a read-only ``np.memmap`` (no copy, no read)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{member}.npy")
    except KeyError:
        raise AdvkitError(f"{path} has no array '{member}' (generated data needs 'image' and 'label')") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise AdvkitError(f"{path} is not a readable .npz file ({exc})") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise AdvkitError(
            f"{path}: '{member}' is compressed, so it cannot be memory-mapped; re-save it uncompressed "
            "(np.savez instead of np.savez_compressed)"
        )
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(ZIP_LOCAL_HEADER)
        name_length, extra_length = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        handle.seek(info.header_offset + ZIP_LOCAL_HEADER + name_length + extra_length)
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(handle)
        except ValueError as exc:
            raise AdvkitError(f"{path}: '{member}' is not a .npy array ({exc})") from None
        offset = handle.tell()
    if fortran_order:
        raise AdvkitError(f"{path}: '{member}' is stored in Fortran order; re-save it with np.ascontiguousarray")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)


@dataclass
class ExtraData:
    """Memory-mapped generated images (uint8 N×H×W×C per shard) and labels, addressed as one set."""

    images: list[np.ndarray]
    labels: np.ndarray  # int64, all shards concatenated (8 bytes an image: 400 MB for 50M)
    starts: np.ndarray  # index of each shard's first image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8 B×C×H×W) and labels at ``index``, read from the mapped shards."""
        shard = np.searchsorted(self.starts, index, side="right") - 1
        first = self.images[0]
        out = np.empty((len(index), *first.shape[1:]), dtype=np.uint8)
        for number in np.unique(shard):
            chosen = shard == number
            local = index[chosen] - self.starts[number]
            order = np.argsort(local)  # ascending offsets: sequential reads from the mapped file
            out[np.flatnonzero(chosen)[order]] = self.images[number][local[order]]
        images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return images, torch.from_numpy(self.labels[index])


def load_extra_data(path: str | Path, info: DatasetInfo) -> ExtraData:
    """Open ``path`` (a ``.npz`` or a folder of them) and check it fits ``info``; one-line errors otherwise."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise AdvkitError(f"--extra-data {path} holds no .npz shards")
    elif path.is_file():
        files = [path]
    else:
        raise AdvkitError(f"--extra-data {path} not found (expected a .npz file or a folder of .npz shards)")
    channels, height, width = info.input_shape
    images, labels = [], []
    for file in files:
        image = memory_map_member(file, "image")
        label = memory_map_member(file, "label")
        if image.dtype != np.uint8 or image.shape[1:] != (height, width, channels):
            raise AdvkitError(
                f"{file}: 'image' is {image.dtype} {tuple(image.shape)}, but {info.name} needs uint8 "
                f"N×{height}×{width}×{channels}"
            )
        if label.ndim != 1 or label.shape[0] != image.shape[0] or not np.issubdtype(label.dtype, np.integer):
            raise AdvkitError(
                f"{file}: 'label' must be N integers matching 'image' ({image.shape[0]}), got "
                f"{label.dtype} {tuple(label.shape)}"
            )
        label = np.asarray(label, dtype=np.int64)
        if label.size and (label.min() < 0 or label.max() >= info.num_classes):
            bad = label[(label < 0) | (label >= info.num_classes)][0]
            raise AdvkitError(f"{file}: label {bad} is outside {info.name}'s classes 0..{info.num_classes - 1}")
        images.append(image)
        labels.append(label)
    sizes = np.array([len(label) for label in labels])
    if sizes.sum() == 0:
        raise AdvkitError(f"--extra-data {path} holds no images")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return ExtraData(images, np.concatenate(labels), starts)
