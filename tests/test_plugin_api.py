"""Plugin API v2: example indices, epoch hooks and custom metrics, seen from a probe plugin written here.

The probe is installed as a distribution in a temporary folder (as an outside author's plugin would be),
and records what the trainer hands it, so each test checks the core against what it must provide.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from advkit import AdvkitError, StepContext, TrainConfig, Trainer
from advkit.components import Progress
from advkit.data import ArrayDataset, BatchLoader
from advkit.registry import Registry
from advkit.testing import straight_and_resumed

PROBE = '''
import torch
from advkit import LabelRectifier, Option, Schedule, one_hot


class Probe(LabelRectifier):
    """Records indices, labels and hook calls; logs a per-step metric and an epoch-level one."""

    options = (Option("metric_name", str, "probe_index_mean", "name of the per-step metric"),
               Option("weight", Schedule, 1.0, "a value over training (unused): constant unless start:end"))

    def setup(self, run):
        self.num_examples = run.num_examples
        self.seen = torch.zeros(run.num_examples, dtype=torch.long)
        self.steps = []      # (epoch, index, y) of every step
        self.events = []

    def targets(self, ctx):
        self.seen[ctx.index.cpu()] += 1
        self.steps.append((ctx.progress.epoch + 1, ctx.index.cpu().clone(), ctx.y.cpu().clone()))
        ctx.log_metric(self.metric_name, ctx.index.float().mean())
        return one_hot(ctx.y, ctx.num_classes)

    def on_epoch_start(self, epoch):
        self.events.append(("start", epoch))

    def on_epoch_end(self, epoch, metrics):
        self.events.append(("end", epoch, sorted(key for key in metrics if key.startswith("val_"))))
        return {"probe_seen": float(self.seen.sum())}

    def state_dict(self):
        return {"seen": self.seen.clone(), "events": list(self.events)}

    def load_state_dict(self, state):
        self.seen = state["seen"].clone()
        self.events = list(state["events"])
'''


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Registry:
    root = tmp_path / "site"
    info = root / "probe_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""
        [advkit.rectifiers]
        probe = probe_mod:Probe
        """)
    )
    (root / "probe_mod.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(root))
    return Registry()


def config(**overrides) -> TrainConfig:
    values = dict(
        dataset="digits",
        model="small-cnn",
        objective="at",
        rectifier="probe",
        eps=0.1,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_steps=1,
        val_size=100,
        seed=3,
        device="cpu",
        options={"attack": {"steps": 1}},
    )
    values.update(overrides)
    return TrainConfig(**values)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_indices_name_each_training_example_and_are_stable_across_epochs(tmp_path, registry):
    trainer = Trainer(config(), tmp_path / "run", registry=registry, progress=False)
    trainer.fit()
    probe = trainer.rectifier
    n = len(trainer.train_loader.y)
    assert probe.num_examples == n
    per_epoch = len(trainer.train_loader) * 64
    assert int(probe.seen.sum()) == 2 * per_epoch and int(probe.seen.max()) <= 2  # each example at most once per epoch
    for _, index, labels in probe.steps:
        assert torch.equal(trainer.train_loader.y[index], labels)  # the index names the very example trained on
    first, second = (torch.cat([index for epoch, index, _ in probe.steps if epoch == e]) for e in (1, 2))
    assert not torch.equal(first, second)  # reshuffled, but the same examples keep the same numbers


def test_hooks_run_in_order_around_validation_and_metrics_reach_metrics_jsonl(tmp_path, registry):
    run = tmp_path / "run"
    trainer = Trainer(config(), run, registry=registry, progress=False)
    trainer.fit()
    probe = trainer.rectifier
    validation = ["val_clean_acc", "val_robust_acc"]
    assert probe.events == [("start", 1), ("end", 1, validation), ("start", 2), ("end", 2, validation)]
    for record in records(run):
        means = [index.float().mean().item() for epoch, index, _ in probe.steps if epoch == record["epoch"]]
        assert record["probe_index_mean"] == pytest.approx(sum(means) / len(means), rel=1e-6)
    assert [record["probe_seen"] for record in records(run)] == [len(probe.steps) * 32.0, len(probe.steps) * 64.0]


def test_a_mid_epoch_resume_calls_no_second_epoch_start_and_restores_metric_totals(tmp_path, registry):
    _, resumed = straight_and_resumed(config(), tmp_path, stop_after_steps=22, registry=registry)  # epoch 2, step 2
    straight, stopped = tmp_path / "straight", tmp_path / "resumed"
    assert resumed.rectifier.events == [
        ("start", 1),
        ("end", 1, ["val_clean_acc", "val_robust_acc"]),
        ("start", 2),
        ("end", 2, ["val_clean_acc", "val_robust_acc"]),
    ]
    for a, b in zip(records(straight), records(stopped), strict=True):
        assert a["probe_index_mean"] == b["probe_index_mean"] and a["probe_seen"] == b["probe_seen"]
        assert a["val_robust_acc"] == b["val_robust_acc"]


def test_a_metric_named_like_the_trainers_own_is_refused(tmp_path, registry):
    trainer = Trainer(
        config(epochs=1, options={"attack": {"steps": 1}, "probe": {"metric_name": "train_loss"}}),
        tmp_path / "run",
        registry=registry,
        progress=False,
    )
    with pytest.raises(AdvkitError, match="metric named 'train_loss', which is the trainer's own"):
        trainer.fit()


def test_a_run_extends_only_while_no_component_follows_the_length_of_training(tmp_path, registry):
    constant = config(epochs=1, lr_schedule="constant")
    Trainer(constant, tmp_path / "constant", registry=registry, progress=False).fit()
    extended = Trainer.resume_run(tmp_path / "constant", epochs=2, registry=registry, progress=False)
    assert extended.rectifier.length_dependent_options() == []
    annealed = config(
        epochs=1, lr_schedule="constant", options={"attack": {"steps": 1}, "rectifier": {"weight": "1:0.5"}}
    )
    Trainer(annealed, tmp_path / "annealed", registry=registry, progress=False).fit()
    with pytest.raises(
        AdvkitError,
        match=r"rectifier 'probe' follows the length of training through "
        r"rectifier\.weight=1:0\.5 \(a schedule over the whole run",
    ):
        Trainer.resume_run(tmp_path / "annealed", epochs=2, registry=registry, progress=False)


def test_log_metric_takes_scalars_only():
    ctx = StepContext(
        model=torch.nn.Identity(),
        x=torch.zeros(2, 3),
        y=torch.zeros(2, dtype=torch.long),
        num_classes=3,
        progress=Progress(0, 0, 1, 1),
    )
    ctx.log_metric("fine", 2.5)
    assert ctx.metrics["fine"].item() == 2.5
    with pytest.raises(ValueError, match="takes a scalar"):
        ctx.log_metric("vector", torch.ones(3))


def test_loader_indices_match_the_data_on_every_rank_and_after_a_mid_epoch_start():
    data = ArrayDataset(torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1), torch.arange(40) % 10)
    single = BatchLoader(data, 8, shuffle=True, drop_last=True, seed=2)
    single.set_epoch(1)
    batches = list(single.indexed())
    for x, _, index in batches:
        assert torch.equal(x.flatten(), index.float())  # example i holds the value i
    single.set_epoch(1, start_batch=2)
    assert [index.tolist() for _, _, index in single.indexed()] == [index.tolist() for _, _, index in batches[2:]]
    shards = [BatchLoader(data, 8, shuffle=True, drop_last=True, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(1)
    for (_, _, whole), (_, _, part0), (_, _, part1) in zip(
        batches, *(shard.indexed() for shard in shards), strict=True
    ):
        assert torch.equal(torch.cat([part0, part1]), whole)


def test_the_plugin_guides_example_trains_and_logs_its_metrics(tmp_path, monkeypatch):
    guide = (Path(__file__).resolve().parent.parent / "docs" / "plugin-authors.md").read_text()
    section = guide.split("### Example: per-example state, an epoch hook and a metric", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "site"
    info = root / "past_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: past-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[advkit.rectifiers]\npast = past_mod:PastPredictions\n")
    (root / "past_mod.py").write_text(code)
    monkeypatch.syspath_prepend(str(root))
    run = tmp_path / "run"
    trainer = Trainer(config(rectifier="past"), run, registry=Registry(), progress=False)
    trainer.fit()
    for record in records(run):
        assert 0.1 <= record["past_confidence"] <= 1.0 and record["past_memory_change"] > 0
    assert not torch.allclose(trainer.rectifier.memory, torch.full_like(trainer.rectifier.memory, 0.1))


def test_eval_runs_and_lists_installed_attacks_as_plugin_names(tmp_path):
    from click.testing import CliRunner

    from advkit.cli import cli
    from advkit.testing import train_digits

    run = train_digits(tmp_path / "run")
    listing = CliRunner().invoke(cli, ["eval", "--list-attacks"])
    assert listing.exit_code == 0 and "plugin:pgd  [advkit" in listing.output and "norms Linf, L2" in listing.output
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(run),
            "--attack",
            "clean",
            "--attack",
            "plugin:pgd:steps=3",
            "--attack",
            "plugin:fgsm",
            "--n-examples",
            "40",
            "--quiet",
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["accuracy"]) == {"clean", "plugin:pgd:steps=3", "plugin:fgsm"}
    assert report["accuracy"]["plugin:pgd:steps=3"] <= report["accuracy"]["clean"]
    bad = CliRunner().invoke(cli, ["eval", str(run), "--attack", "plugin:pgd:stepz=3"])
    assert bad.exit_code != 0 and "stepz" in str(bad.exception or bad.output)
