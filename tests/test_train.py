"""End-to-end training on the embedded digits set: run directory, resume continuity, LR schedules."""

import json

import pytest
import torch
import yaml

from advkit import AdvkitError, TrainConfig, Trainer
from advkit.config import load_config_file
from advkit.train import learning_rate


def digits_config(**overrides):
    settings = dict(
        dataset="digits",
        model="small-cnn",
        objective="trades",
        eps=0.1,
        epochs=2,
        batch_size=64,
        lr=0.05,
        val_steps=3,
        seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_run_directory_contents(tmp_path):
    config = digits_config(options={"trades": {"beta": "3"}})
    history = Trainer(config, tmp_path / "run", progress=False).fit()
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records == history
    for key in ("train_loss", "train_acc", "val_clean_acc", "val_robust_acc", "lr", "time_s"):
        assert key in records[0]
    assert all(0.0 <= r["val_robust_acc"] <= r["val_clean_acc"] + 0.05 for r in records)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["objective"] == "trades" and saved["attack"] == "trades-kl" and saved["rectifier"] == "onehot"
    assert saved["options"]["objective"]["beta"] == 3.0 and saved["options"]["attack"]["eps"] == 0.1
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == max(records, key=lambda r: r["val_robust_acc"])["epoch"]


def test_config_yaml_reruns_the_same_run(tmp_path):
    Trainer(digits_config(epochs=1), tmp_path / "a", progress=False).fit()
    again = load_config_file(tmp_path / "a" / "config.yaml")
    Trainer(again, tmp_path / "b", progress=False).fit()
    first = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_config_yaml_records_a_torchattacks_attacks_arguments(tmp_path):
    config = digits_config(epochs=1, objective="at", attack="torchattacks:PGD", options={"attack": {"steps": "2"}})
    Trainer(config, tmp_path / "run", progress=False).fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["attack"] == "torchattacks:PGD"
    # the signature's defaults are written too, so the file alone re-runs the same attack
    assert saved["options"]["attack"] == {"eps": 0.1, "alpha": pytest.approx(2 / 255), "steps": 2, "random_start": True}


def test_resume_continues_exactly(tmp_path):
    config = digits_config(epochs=3, objective="at", wa=0.9)
    Trainer(config, tmp_path / "straight", progress=False).fit()
    Trainer(digits_config(epochs=3, objective="at", wa=0.9), tmp_path / "stopped", progress=False).fit(
        stop_after_epoch=1
    )
    resumed = Trainer.resume_run(tmp_path / "stopped", progress=False)
    assert resumed.start_epoch == 1
    resumed.fit()
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    stopped = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, stopped["model"][key]), key
    for key, value in straight["averages"]["0.9"]["model"].items():
        assert torch.equal(value, stopped["averages"]["0.9"]["model"][key]), key
    assert [r["val_robust_acc"] for r in straight["history"]] == [r["val_robust_acc"] for r in stopped["history"]]


def test_existing_run_is_not_overwritten(tmp_path):
    Trainer(digits_config(epochs=1), tmp_path / "run", progress=False).fit()
    with pytest.raises(AdvkitError, match="already holds a run"):
        Trainer(digits_config(epochs=1), tmp_path / "run", progress=False)


def test_trades_is_more_robust_than_standard_training(tmp_path):
    robust = {}
    for objective in ("standard", "trades"):
        config = digits_config(objective=objective, epochs=3, val_steps=10)
        robust[objective] = Trainer(config, tmp_path / objective, progress=False).fit()[-1]["val_robust_acc"]
    assert robust["trades"] > robust["standard"] + 0.15, robust


def test_learning_rate_schedules():
    piecewise = TrainConfig(epochs=10, lr=0.1)
    assert learning_rate(piecewise, 0, 100) == pytest.approx(0.1)
    assert learning_rate(piecewise, 499, 100) == pytest.approx(0.1)
    assert learning_rate(piecewise, 500, 100) == pytest.approx(0.01)  # milestone at 50% of 10 epochs
    assert learning_rate(piecewise, 750, 100) == pytest.approx(0.001)
    cosine = TrainConfig(epochs=10, lr=0.1, lr_schedule="cosine")
    assert learning_rate(cosine, 0, 100) == pytest.approx(0.1)
    assert learning_rate(cosine, 500, 100) == pytest.approx(0.05)
    assert learning_rate(cosine, 1000, 100) == pytest.approx(0.0, abs=1e-12)
    warm = TrainConfig(epochs=10, lr=0.1, lr_warmup=2, lr_milestones=[5])
    assert learning_rate(warm, 100, 100) == pytest.approx(0.05)
    assert learning_rate(warm, 300, 100) == pytest.approx(0.1)
    assert learning_rate(warm, 600, 100) == pytest.approx(0.01)


def _records_without_time(history):
    return [{key: value for key, value in record.items() if key != "time_s"} for record in history]


def test_extending_a_finished_run_continues_exactly_like_a_straight_run(tmp_path):
    milestones = [1.5, 2.5]  # given in epochs: they keep their meaning when the run grows
    Trainer(digits_config(epochs=3, lr_milestones=milestones), tmp_path / "straight", progress=False).fit()
    Trainer(digits_config(epochs=2, lr_milestones=milestones), tmp_path / "extended", progress=False).fit()
    extended = Trainer.resume_run(tmp_path / "extended", epochs=3, progress=False)
    assert extended.start_epoch == 2
    extended.fit()
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    grown = torch.load(tmp_path / "extended" / "last.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(value, grown["model"][key]), key
    assert _records_without_time(grown["history"]) == _records_without_time(straight["history"])
    assert grown["history"][-1]["lr"] == pytest.approx(0.05 * 0.01)  # the second milestone applied in epoch 3
    assert grown["config"]["epochs"] == 3
    assert yaml.safe_load((tmp_path / "extended" / "config.yaml").read_text())["epochs"] == 3
    again = Trainer.resume_run(tmp_path / "extended", progress=False)  # config.yaml and last.pt agree on 3
    assert again.fit() == grown["history"]
    assert Trainer.resume_run(tmp_path / "extended", epochs=3, progress=False).fit() == grown["history"]  # no-op


def _digests(run):
    import hashlib

    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(run.iterdir())}


def test_an_extension_that_would_change_the_trained_lr_is_refused_and_writes_nothing(tmp_path, run_cli):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=2, objective="at", val_steps=1), run, progress=False).fit()  # milestones 1, 1.5
    before = _digests(run)
    for args, fragments in [
        (
            ["--epochs", "3"],
            [
                "cannot extend {run} from 2 to 3 epochs: the learning rate of step ",
                " (epoch 2), already trained at 0.005, would be 0.05 in a run of 3 epochs, because "
                "--lr-milestones defaults to 50% and 75% of --epochs (pass explicit --lr-milestones",
            ],
        ),
        (["--epochs", "1"], ["--epochs 1 would shorten {run}, a run of 2 epochs; --resume only extends runs"]),
        (["--epochs", "3", "--lr-milestones", "1,1.5"], ["drop --lr-milestones"]),
        (["--epochs", "3", "--lr", "0.1"], ["drop --lr"]),
        (["--out", str(tmp_path / "elsewhere")], ["drop --out"]),
    ]:
        code, out, err = run_cli(["train", "--resume", str(run), "--quiet", *args])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert all(fragment.format(run=run) in lines[0] for fragment in fragments), err
        assert _digests(run) == before
    # epochs raised in config.yaml (by hand, or by a kill right after an extension rewrote it) is the same request
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    code, _, err = run_cli(["train", "--resume", str(run), "--quiet"])
    assert code == 2 and f"cannot extend {run} from 2 to 3 epochs: the learning rate of step" in err, err


def test_an_extension_is_allowed_while_the_default_milestones_are_not_yet_reached(tmp_path):
    run = tmp_path / "run"
    Trainer(digits_config(epochs=4, objective="at", val_steps=1), run, progress=False).fit(stop_after_epoch=1)
    Trainer.resume_run(run, epochs=6, progress=False)  # milestones 2, 3 → 3, 4.5: epoch 1's LR is the same
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 6
    with pytest.raises(AdvkitError, match="cosine schedule spans --epochs"):
        cosine = tmp_path / "cosine"
        Trainer(digits_config(epochs=2, objective="at", val_steps=1, lr_schedule="cosine"), cosine, progress=False).fit(
            stop_after_epoch=1
        )
        Trainer.resume_run(cosine, epochs=3, progress=False)
