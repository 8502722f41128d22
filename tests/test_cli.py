"""The command line as a user meets it: listings, and one-line errors with exit status 2 for bad input."""

import pytest
import torch


def run_ok(run_cli, args):
    code, out, err = run_cli(args)
    assert code == 0, err
    return out


def test_plugins_lists_builtins_with_their_distribution(run_cli):
    out = run_ok(run_cli, ["plugins"])
    rows = {tuple(line.split()[:3]) for line in out.splitlines()}
    for kind, name in [
        ("objective", "trades"),
        ("objective", "at"),
        ("objective", "standard"),
        ("attack", "pgd"),
        ("attack", "trades-kl"),
        ("rectifier", "onehot"),
    ]:
        assert (kind, name, "advkit") in rows


def test_plugins_show_prints_typed_options(run_cli):
    out = run_ok(run_cli, ["plugins", "show", "trades"])
    assert "-o trades.beta  float [0, inf]  default 6.0" in out
    assert "default attack: trades-kl" in out


BAD_TRAIN = [
    (["--objective", "tradez"], "unknown objective 'tradez'; did you mean 'trades'?"),
    (["--eps", "-0.1"], "--eps must lie in [0, 1]"),
    (["--eps", "2"], "--eps must lie in [0, 1]"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["-o", "trades.beta=-1"], "objective 'trades': option 'beta' must lie in [0, inf]"),
    (
        ["-o", "trades.gamma=1"],
        "objective 'trades': unknown option 'gamma' (valid options: beta, concat, kl_reduction)",
    ),
    (["-o", "trades.beta"], "expected component.option=value"),
    (["-o", "pgd.steps=3"], "option prefix 'pgd' matches no selected component"),
    (["-o", "attack.steps=many"], "attack 'trades-kl': option 'steps' expects int"),
    (["--attack", "torchattacks:PDG"], "did you mean 'torchattacks:PGD'"),
    (["--model", "resnet81"], "resnet81"),
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN)
def test_bad_train_input_is_one_line_exit_2_and_writes_nothing(extra, message, run_cli, tmp_path):
    out_dir = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "small-cnn",
        "--objective",
        "trades",
        "--epochs",
        "1",
        "--out",
        str(out_dir),
        "--quiet",
    ]
    code, out, err = run_cli(args + extra)
    assert code == 2
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not out_dir.exists()


def test_missing_data_directory(run_cli, tmp_path):
    code, _, err = run_cli(
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cifar" in err.lower()


def test_eval_missing_and_corrupt_checkpoints(run_cli, tmp_path):
    code, _, err = run_cli(["eval", str(tmp_path / "absent.pt")])
    assert code == 2 and "no such run directory or checkpoint" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    code, _, err = run_cli(["eval", str(corrupt)])
    assert code == 2 and "is not a readable PyTorch file" in err and len(err.strip().splitlines()) == 1
    torch.save({"something": torch.zeros(1)}, tmp_path / "foreign.pt")
    code, _, err = run_cli(["eval", str(tmp_path / "foreign.pt")])
    assert code == 2 and "is not an advkit checkpoint" in err
    code, _, err = run_cli(["eval", str(tmp_path)])
    assert code == 2 and "holds no best.pt" in err


def test_eval_unknown_attack_fails_before_work(run_cli, tmp_path):
    code, _, err = run_cli(["eval", str(tmp_path), "--attack", "pgdd"])
    assert code == 2 and "pgdd" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--epochs", "abc"],
            "Invalid value for '--epochs': 'abc' is not a valid integer (see advkit train --help)",
        ),
        (["train", "--bogus"], "No such option '--bogus'"),
        (["evall"], "No such command 'evall'. Did you mean 'eval'? (see advkit --help)"),
        (["eval"], "Missing argument 'TARGET' (see advkit eval --help)"),
    ],
)
def test_click_usage_errors_are_one_line_exit_2(args, message, run_cli):
    code, out, err = run_cli(args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("advkit: error: ") and message in err, err


def test_threads_sets_torchs_thread_count_and_may_change_on_resume(tmp_path):
    import torch

    from advkit import TrainConfig, Trainer

    before = torch.get_num_threads()
    try:
        config = TrainConfig(
            dataset="digits",
            model="small-cnn",
            eps=0.1,
            epochs=2,
            batch_size=64,
            val_steps=1,
            device="cpu",
            threads=2,
            options={"attack": {"steps": 1}},
        )
        Trainer(config, tmp_path / "run", progress=False).fit(stop_after_epoch=1)
        assert torch.get_num_threads() == 2
        saved = (tmp_path / "run" / "config.yaml").read_text().replace("threads: 2", "threads: 1")
        (tmp_path / "run" / "config.yaml").write_text(saved)  # where the run works, not what it computes
        resumed = Trainer.resume_run(tmp_path / "run", progress=False)
        assert torch.get_num_threads() == 1
        resumed.fit()
        assert resumed.history[-1]["epoch"] == 2
    finally:
        torch.set_num_threads(before)


def test_milestones_beyond_the_epochs_are_warned_about(run_cli, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "dataset: digits\nmodel: small-cnn\neps: 0.1\nval_steps: 1\ndevice: cpu\nlr_milestones: [100, 150]\n"
        "options: {attack: {steps: 1}}\n"
    )
    code, _, err = run_cli(["train", "--config", str(config), "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")])
    assert code == 0 and "--lr-milestones [100.0, 150.0] lie at or beyond --epochs 1" in err
