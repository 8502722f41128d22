"""The batched on-device loader: order and augmentation from (seed, epoch) alone, resumable mid-epoch.

The dataset is moved to the training device once. Augmentation (random crop with zero padding, horizontal
flip) runs vectorised on whole batches there, driven by a ``torch.Generator`` seeded from ``(seed,
epoch)`` only, so a resumed run sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import AdvkitError
from .datasets import ArrayDataset, DatasetInfo, to_float
from .extra import ExtraData


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one (seed, epoch, purpose): well-mixed, independent of the global RNG and device."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch, stream]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def augment_batch(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Crop each image at offset (dy, dx) of its zero-padded copy, then mirror those with ``flip``.

    One gather for the whole batch: output[b, :, i, j] = padded[b, :, dy[b] + i, dx[b] + j'] where
    j' = W-1-j when ``flip[b]`` else j. Offsets lie in 0..2·padding; offset ``padding`` means no shift.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]
    batch_index = torch.arange(b, device=x.device)[:, None, None, None]
    channel_index = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


class BatchLoader:
    """Iterates (x, y) batches: x float32 in [0, 1] on ``device``, y int64 on ``device``; ``indexed()`` adds
    each example's index.

    The dataset is moved to ``device`` once, so a step does no host transfer. Order and augmentation depend
    only on ``(seed, epoch)``: call :meth:`set_epoch` before each epoch, and a resumed run replays exactly;
    ``start_batch`` resumes in the middle of an epoch with the very batches that were still to come.

    Under data parallelism every rank draws the same permutation and augmentation and yields its own
    slice of each global batch of ``batch_size``: rank r gets examples [r·b, (r+1)·b) of it, b =
    batch_size / world_size, so the ranks' slices together are exactly the single-process batch.

    With ``extra`` (generated data), ``extra_per_batch`` of the ``batch_size`` examples of every batch come
    from it, drawn uniformly (with replacement) by a (seed, epoch) generator and augmented like the real
    ones; an epoch is still one pass over the real data. Each rank takes its slice of both parts.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        augment: DatasetInfo | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        extra: ExtraData | None = None,
        extra_per_batch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise AdvkitError(f"batch size must be at least 1, got {batch_size}")
        if batch_size % world_size or (world_size > 1 and not drop_last):
            raise AdvkitError(
                f"--batch-size {batch_size} is the global batch and must divide by the number of "
                f"processes ({world_size}); use a multiple of {world_size}"
            )
        if extra is not None and not (0 < extra_per_batch < batch_size and extra_per_batch % world_size == 0):
            raise AdvkitError(
                f"{extra_per_batch} generated examples per batch of {batch_size} leave no real ones "
                f"or do not divide by the {world_size} processes"
            )
        self.rank, self.world_size = rank, world_size
        self.extra, self.extra_per_batch = extra, extra_per_batch if extra is not None else 0
        self.device = torch.device(device)
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.batch_size = batch_size - self.extra_per_batch  # real examples per global batch
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.padding = augment.crop_padding if augment is not None else 0
        self.flip = augment.flip if augment is not None else False
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the shuffle order and augmentation of ``epoch``; iteration begins at batch ``start_batch``."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        n = self.y.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.indexed():
            yield x, y

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches (x, y, index): ``index`` (int64, on ``device``) is each example's position in the dataset,
        the same in every epoch, after a resume and on every rank; generated examples get len(data) + j."""
        n = self.y.shape[0]
        order = torch.randperm(n, generator=_generator(self.seed, self.epoch, 0)) if self.shuffle else None
        augmenting = self.padding > 0 or self.flip
        if augmenting:
            g = _generator(self.seed, self.epoch, 1)
            offsets = torch.randint(0, 2 * self.padding + 1, (2, n), generator=g)
            flips = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        if order is not None:
            order = order.to(self.device)
        drawn = self._draw_extra(self.extra) if self.extra is not None else None
        share = self.batch_size // self.world_size
        for i in range(self.start_batch, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if self.world_size > 1:  # this rank's slice of the global batch
                lo, hi = lo + self.rank * share, lo + (self.rank + 1) * share
            index = torch.arange(lo, hi, device=self.device) if order is None else order[lo:hi]
            x, y = (self.x[lo:hi], self.y[lo:hi]) if order is None else (self.x[index], self.y[index])
            if augmenting:
                x = augment_batch(x, offsets[0, lo:hi], offsets[1, lo:hi], flips[lo:hi], self.padding)
            x = to_float(x)
            if self.extra is not None and drawn is not None:
                extra_x, extra_y, extra_index = self._extra_batch(self.extra, i, drawn)
                x, y, index = torch.cat([x, extra_x]), torch.cat([y, extra_y]), torch.cat([index, extra_index + n])
            yield x, y, index

    def _draw_extra(self, extra: ExtraData) -> dict[str, torch.Tensor]:
        """This epoch's generated examples for every batch (indices) and their augmentation, from (seed, epoch)."""
        count = len(self) * self.extra_per_batch
        g = _generator(self.seed, self.epoch, 2)
        drawn = {"index": torch.randint(0, len(extra), (count,), generator=g)}
        if self.padding > 0 or self.flip:
            drawn["offsets"] = torch.randint(0, 2 * self.padding + 1, (2, count), generator=g)
            drawn["flips"] = torch.rand(count, generator=g) < 0.5 if self.flip else torch.zeros(count, dtype=torch.bool)
        return drawn

    def _extra_batch(
        self, extra: ExtraData, batch: int, drawn: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's generated part of global batch ``batch``: read from the mapped files, moved, augmented;
        with each example's index in the generated set."""
        share = self.extra_per_batch // self.world_size
        lo = batch * self.extra_per_batch + self.rank * share
        chosen = drawn["index"][lo : lo + share]
        images, labels = extra.take(chosen.numpy())
        pin = self.device.type == "cuda"
        images = (images.pin_memory() if pin else images).to(self.device, non_blocking=pin)
        labels = (labels.pin_memory() if pin else labels).to(self.device, non_blocking=pin)
        if "offsets" in drawn:
            offsets, flips = (
                drawn["offsets"][:, lo : lo + share].to(self.device),
                drawn["flips"][lo : lo + share].to(self.device),
            )
            images = augment_batch(images, offsets[0], offsets[1], flips, self.padding)
        return to_float(images), labels, chosen.to(self.device)
