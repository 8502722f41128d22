"""Two `advkit sweep` workers share one study through a real PostgreSQL server, as two machines would.

The test starts its own server (initdb and pg_ctl of Debian's `postgresql` package) in a temporary folder on
a free loopback port and stops it at the end. PostgreSQL refuses to run as root, so under root (CI) the server
runs as the `postgres` system user the package creates. Each worker has its own sweep folder, as on two
machines; between them they must run every trial exactly once.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="advkit sweep needs optuna (pip install optuna)")

USER = "advkit"
SPACE = {
    "base": {
        "dataset": "digits",
        "model": "small-cnn",
        "eps": 0.1,
        "epochs": 2,
        "batch_size": 64,
        "train_size": 256,
        "val_size": 64,
        "val_steps": 1,
        "device": "cpu",
        "options": {"attack.steps": 2},
    },
    "space": {
        "lr": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
        "momentum": {"type": "float", "low": 0.5, "high": 0.95},
    },
}


def server_binaries() -> tuple[str, str] | None:
    """initdb and pg_ctl: on PATH, or where Debian puts them (/usr/lib/postgresql/<version>/bin)."""
    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb, pg_ctl = shutil.which("initdb", path=folder), shutil.which("pg_ctl", path=folder)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for this module: yields its URL; stopped and removed at the end."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if not any(importlib.util.find_spec(name) for name in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver for SQLAlchemy: pip install psycopg2-binary")
    initdb, pg_ctl = binaries
    folder = Path(tempfile.mkdtemp(prefix="advkit-pg-"))  # not under pytest's tmp: that is private to root
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres") if _has_user("postgres") else pwd.getpwnam("nobody")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", owner.pw_name, "--"]
    data, port = folder / "data", free_port()
    subprocess.run(
        as_user + [initdb, "-D", str(data), "-U", USER, "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        as_user + [pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            as_user + [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120
        )
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_two_workers_share_one_study_and_run_each_trial_once(postgres, tmp_path):
    from advkit.sweeps.storage import resolve_storage

    space = tmp_path / "shared.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    command = [
        sys.executable,
        "-m",
        "advkit",
        "sweep",
        str(space),
        "--trials",
        "3",
        "--storage",
        postgres,
        "--study-name",
        "shared",
        "--heartbeat",
        "5",
        "--threads",
        "1",
    ]
    workers = [
        subprocess.Popen(
            command + ["--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for out in outs
    ]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(outputs)

    trials = optuna.load_study(study_name="shared", storage=resolve_storage(postgres)).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 3
    folders = {out.name: sorted(int(path.name) for path in (out / "trials").iterdir()) for out in outs}
    assert sorted(folders["machine-a"] + folders["machine-b"]) == [0, 1, 2]  # every trial once, on one machine
    assert folders["machine-a"] and folders["machine-b"], folders  # both took part
    for out in outs:
        for number in folders[out.name]:
            run_dir = out / "trials" / str(number)
            assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
            best = max(
                json.loads(line)["val_robust_acc"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            )
            assert trials[number].value == best and trials[number].user_attrs["host"] == socket.gethostname()
        assert "- trials: 3 of 3 ended (3 complete)" in (out / "summary.md").read_text()  # the whole study
