"""Generated data: memory-mapped .npz shards mixed into every batch, deterministic, resumable, sharded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from advkit import AdvkitError, TrainConfig, Trainer
from advkit.data import DIGITS_INFO, ArrayDataset, BatchLoader
from advkit.data.extra import load_extra_data

GENERATED = 200  # pixel value marking a generated image; real ones here are below 1


def write_shard(path: Path, n: int, start: int = 0, **overrides) -> None:
    """n generated 8×8×1 images whose first pixel is their index (start + i) and whose labels are (start+i) % 10."""
    image = np.full((n, 8, 8, 1), GENERATED, dtype=np.uint8)
    image[:, 0, 0, 0] = (np.arange(start, start + n) % 256).astype(np.uint8)
    arrays = {"image": image, "label": np.arange(start, start + n) % 10}
    arrays.update(overrides)
    np.savez(path, **arrays)


def real_data(n: int = 40) -> ArrayDataset:
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 1, 1] = torch.arange(n) / 1000.0  # the real example's id, well below a generated pixel
    return ArrayDataset(x, torch.arange(n) % 10)


def test_shards_are_memory_mapped_and_read_by_global_index(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    write_shard(folder / "a.npz", 30, start=0)
    write_shard(folder / "b.npz", 20, start=30)
    extra = load_extra_data(folder, DIGITS_INFO)
    assert len(extra) == 50 and all(isinstance(images, np.memmap) for images in extra.images)
    index = np.array([49, 0, 31, 29, 30, 5])
    images, labels = extra.take(index)
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.uint8
    assert images[:, 0, 0, 0].tolist() == index.tolist() and labels.tolist() == (index % 10).tolist()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_shard(p, 5, image=np.zeros((5, 8, 8, 3), np.uint8)), r"needs uint8 N×8×8×1"),
        (lambda p: write_shard(p, 5, image=np.zeros((5, 8, 8, 1), np.float32)), r"'image' is float32"),
        (lambda p: write_shard(p, 5, label=np.arange(5) + 8), r"label 10 is outside digits's classes 0..9"),
        (lambda p: write_shard(p, 5, label=np.arange(4)), r"'label' must be N integers matching 'image'"),
        (lambda p: np.savez(p, images=np.zeros((5, 8, 8, 1), np.uint8)), r"has no array 'image'"),
        (
            lambda p: np.savez_compressed(p, image=np.zeros((5, 8, 8, 1), np.uint8), label=np.zeros(5, int)),
            r"is compressed, so it cannot be memory-mapped; re-save it uncompressed",
        ),
        (lambda p: p.write_bytes(b"not a zip"), r"is not a readable .npz file"),
    ],
)
def test_generated_data_that_does_not_fit_is_refused(tmp_path, make, message):
    path = tmp_path / "g.npz"
    make(path)
    with pytest.raises(AdvkitError, match=message):
        load_extra_data(path, DIGITS_INFO)


def mixed_loader(tmp_path, **kwargs) -> BatchLoader:
    if not (tmp_path / "g.npz").exists():
        write_shard(tmp_path / "g.npz", 50)
    extra = load_extra_data(tmp_path / "g.npz", DIGITS_INFO)
    return BatchLoader(real_data(), 10, shuffle=True, drop_last=True, seed=4, extra=extra, extra_per_batch=6, **kwargs)


def test_every_batch_mixes_a_fixed_share_and_an_epoch_is_one_pass_over_the_real_data(tmp_path):
    loader = mixed_loader(tmp_path)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(loader) == len(batches) == 40 // 4  # 4 real examples per batch of 10
    real_ids = []
    for x, _ in batches:
        generated = x[:, 0, 0, 1] > 0.5  # generated images are bright everywhere
        assert x.shape[0] == 10 and int(generated.sum()) == 6
        real_ids += (x[~generated, 0, 1, 1] * 1000).round().long().tolist()
    assert sorted(real_ids) == list(range(40))  # each real example exactly once


def test_mixing_is_deterministic_and_resumes_mid_epoch(tmp_path):
    first, second = mixed_loader(tmp_path), mixed_loader(tmp_path)
    for loader in (first, second):
        loader.set_epoch(3)
    whole = list(first)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, second, strict=True))
    second.set_epoch(3, start_batch=4)
    tail = list(second)
    assert len(tail) == len(whole) - 4 and all(torch.equal(a[0], b[0]) for a, b in zip(whole[4:], tail, strict=True))
    first.set_epoch(4)
    assert not torch.equal(next(iter(first))[0], whole[0][0])  # another epoch draws other examples


def test_ranks_take_their_slices_of_both_parts(tmp_path):
    single = mixed_loader(tmp_path)
    ranks = [mixed_loader(tmp_path, rank=r, world_size=2) for r in (0, 1)]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    for (x, _), (x0, _), (x1, _) in zip(single, *ranks, strict=True):
        assert x0.shape[0] == x1.shape[0] == 5
        merged = torch.cat([x0[:2], x1[:2], x0[2:], x1[2:]])  # real parts, then generated parts
        assert torch.equal(merged, x)


def digits_extra_config(tmp_path: Path, **overrides) -> TrainConfig:
    write_shard(tmp_path / "g.npz", 300)
    settings = dict(
        dataset="digits",
        model="small-cnn",
        objective="at",
        eps=0.1,
        epochs=2,
        batch_size=32,
        val_steps=1,
        seed=3,
        extra_data=str(tmp_path / "g.npz"),
        options={"attack": {"steps": "2"}},
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_training_with_generated_data_resumes_exactly(tmp_path):
    straight = Trainer(digits_extra_config(tmp_path), tmp_path / "straight", progress=False)
    per_epoch = len(straight.train_loader)
    assert per_epoch == (1437 - 143) // (32 - 22)  # round(0.7 × 32) = 22 generated, 10 real per batch
    straight.fit()
    stopped = Trainer(digits_extra_config(tmp_path), tmp_path / "stopped", progress=False)
    stopped.fit(stop_after_steps=per_epoch + 5)
    Trainer.resume_run(tmp_path / "stopped", progress=False).fit()
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_cli_refuses_generated_data_of_another_shape_before_creating_the_run(tmp_path, run_cli):
    write_shard(tmp_path / "g.npz", 5, image=np.zeros((5, 28, 28, 1), np.uint8))
    code, _, err = run_cli(
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "small-cnn",
            "--extra-data",
            str(tmp_path / "g.npz"),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    assert code == 2 and "needs uint8 N×8×8×1" in err and not (tmp_path / "run").exists()
    code, _, err = run_cli(["train", "--dataset", "digits", "--extra-fraction", "0.5", "--out", str(tmp_path / "run")])
    assert code == 2 and "--extra-fraction needs --extra-data" in err
