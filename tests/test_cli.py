"""The command line as a user meets it: listings, and one-line errors with exit status 2 for bad input."""

import sys

import pytest
import torch

from advkit.cli import main


def run_cli(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["advkit", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def run_ok(args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["advkit", *args])
    try:
        main()
    except SystemExit as exc:  # click may exit 0 explicitly
        assert exc.code in (0, None), capsys.readouterr()
    return capsys.readouterr().out


def test_plugins_lists_builtins_with_their_distribution(capsys, monkeypatch):
    out = run_ok(["plugins"], capsys, monkeypatch)
    rows = {tuple(line.split()[:3]) for line in out.splitlines()}
    for kind, name in [("objective", "trades"), ("objective", "at"), ("objective", "standard"),
                       ("attack", "pgd"), ("attack", "trades-kl"), ("rectifier", "onehot")]:
        assert (kind, name, "advkit") in rows


def test_plugins_show_prints_typed_options(capsys, monkeypatch):
    out = run_ok(["plugins", "show", "trades"], capsys, monkeypatch)
    assert "-o trades.beta  float [0, inf]  default 6.0" in out
    assert "default attack: trades-kl" in out


BAD_TRAIN = [
    (["--objective", "tradez"], "unknown objective 'tradez'; did you mean 'trades'?"),
    (["--eps", "-0.1"], "--eps must lie in [0, 1]"),
    (["--eps", "2"], "--eps must lie in [0, 1]"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["-o", "trades.beta=-1"], "objective 'trades': option 'beta' must lie in [0, inf]"),
    (["-o", "trades.gamma=1"], "objective 'trades': unknown option 'gamma' (valid options: beta, concat, kl_reduction)"),
    (["-o", "trades.beta"], "expected component.option=value"),
    (["-o", "pgd.steps=3"], "option prefix 'pgd' matches no selected component"),
    (["-o", "attack.steps=many"], "attack 'trades-kl': option 'steps' expects int"),
    (["--attack", "torchattacks:PDG"], "did you mean 'torchattacks:PGD'"),
    (["--model", "resnet81"], "resnet81"),
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN)
def test_bad_train_input_is_one_line_exit_2_and_writes_nothing(extra, message, capsys, monkeypatch, tmp_path):
    out_dir = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--model", "small-cnn", "--objective", "trades", "--epochs", "1",
            "--out", str(out_dir), "--quiet"]
    code, out, err = run_cli(args + extra, capsys, monkeypatch)
    assert code == 2
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not out_dir.exists()


def test_missing_data_directory(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
                            "--out", str(tmp_path / "run")], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cifar" in err.lower()


def test_eval_missing_and_corrupt_checkpoints(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(["eval", str(tmp_path / "absent.pt")], capsys, monkeypatch)
    assert code == 2 and "no such run directory or checkpoint" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    code, _, err = run_cli(["eval", str(corrupt)], capsys, monkeypatch)
    assert code == 2 and "is not a readable PyTorch file" in err and len(err.strip().splitlines()) == 1
    torch.save({"something": torch.zeros(1)}, tmp_path / "foreign.pt")
    code, _, err = run_cli(["eval", str(tmp_path / "foreign.pt")], capsys, monkeypatch)
    assert code == 2 and "is not an advkit checkpoint" in err
    code, _, err = run_cli(["eval", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and "holds no best.pt" in err


def test_eval_unknown_attack_fails_before_work(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(["eval", str(tmp_path), "--attack", "pgdd"], capsys, monkeypatch)
    assert code == 2 and "pgdd" in err
