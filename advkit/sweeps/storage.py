"""Where a sweep's study lives: a database URL (SQLite in the sweep folder by default, PostgreSQL for many machines).

Everything here is checked before the sweep writes anything: the URL parses and its database answers
(an SQLite file may be new, in a folder that exists or is the sweep folder to be made), and a study of
that name, if there is one, was made from the same sweep. Only then is the study opened for writing.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AdvkitError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

DEFINITION_KEY = "advkit_sweep"  # the study's user attribute that records its sweep (space.Sweep.definition)
CONNECT_TIMEOUT_S = 10
TABLE_RACE_ATTEMPTS = 5


def default_storage(out: Path) -> str:
    """The SQLite file in the sweep folder."""
    return f"sqlite:///{out / 'study.db'}"


def shown(url: str) -> str:
    """The URL as messages print it: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options: wait for a busy SQLite file (two local sweeps), give up on a silent server."""
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    if backend == "postgresql":
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {"pool_pre_ping": True}


def _unreachable(url: str, why: str) -> AdvkitError:
    return AdvkitError(f"--storage {url}: {why}")


def resolve_storage(url: str) -> str:
    """The database URL, checked to parse; ``postgresql://`` gets whichever PostgreSQL driver is installed
    (SQLAlchemy's default for it is psycopg2 up to 2.0, psycopg 3 from 2.1)."""
    import importlib.util

    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise AdvkitError(
            f"--storage {url!r} is not a database URL such as sqlite:///sweep.db or "
            "postgresql://user:password@host:5432/database"
        ) from None
    if parsed.drivername == "postgresql":
        for module in ("psycopg", "psycopg2"):
            if importlib.util.find_spec(module) is not None:
                return parsed.set(drivername=f"postgresql+{module}").render_as_string(hide_password=False)
    return url


def check_storage(url: str, out: Path) -> bool:
    """Raise a one-line error unless the study database (a ``resolve_storage`` URL) can be used; return whether
    it already holds Optuna's tables (a new database or SQLite file is created only once the whole sweep has
    been checked)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    hidden = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise _unreachable(
                hidden, "an in-memory database ends with the command; give a file, e.g. sqlite:///sweep.db"
            )
        path = Path(database)
        if path.is_dir():
            raise _unreachable(hidden, f"{path} is a folder, not a database file")
        if not path.exists():
            _check_can_create(hidden, path.parent, out)
            return False
    try:
        engine = sqlalchemy.create_engine(url, **engine_options(url))
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        driver = " (for PostgreSQL: pip install psycopg2-binary)" if parsed.get_backend_name() == "postgresql" else ""
        raise _unreachable(hidden, f"no database driver for it{driver}: {exc}") from None
    try:
        with engine.connect() as connection:
            return sqlalchemy.inspect(connection).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise _unreachable(
            hidden, f"cannot open the database ({reason[0] if reason else type(exc).__name__})"
        ) from None
    finally:
        engine.dispose()


def _check_can_create(url: str, folder: Path, out: Path) -> None:
    """A new SQLite file: its folder exists and is writable, or is (inside) the sweep folder, made later."""
    resolved, sweep = folder.resolve(), out.resolve()
    if resolved == sweep or sweep in resolved.parents:
        return
    if not folder.is_dir():
        raise _unreachable(url, f"folder {folder} does not exist, so the database file cannot be created there")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise _unreachable(url, f"cannot create the database file in {folder} ({exc.strerror or exc})") from None


def check_study(url: str, name: str, definition: dict[str, Any]) -> None:
    """A study called ``name`` in the database must have been made from this sweep: the same base, parameters,
    objective and seeds (a changed space would mix trials of two questions in one study)."""
    from optuna.storages import RDBStorage

    storage = _storage_or_error(
        lambda: RDBStorage(url, engine_kwargs=engine_options(url), skip_table_creation=True), url
    )
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return
    stored = storage.get_study_user_attrs(study_id).get(DEFINITION_KEY)
    if stored is None:
        if storage.get_all_trials(study_id, deepcopy=False):
            raise AdvkitError(
                f"study '{name}' in {shown(url)} holds trials but was not made by advkit sweep; "
                "choose another --study-name"
            )
        return
    difference = first_difference(stored, definition)
    if difference is not None:
        raise AdvkitError(
            f"study '{name}' in {shown(url)} was made from another sweep ({difference}); restore the "
            "space file and --seeds, or choose another --study-name"
        )


def first_difference(stored: Any, current: Any, where: str = "") -> str | None:
    """The first place where two recorded sweeps differ, in words (``space.lr.high: 0.2 there, 0.3 now``)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in list(stored) + [key for key in current if key not in stored]:
            found = first_difference(stored.get(key), current.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        for index, (old, new) in enumerate(zip(stored, current, strict=True)):
            label = old.get("name", index) if isinstance(old, dict) else index
            found = first_difference(old, new, f"{where}.{label}" if isinstance(label, str) else f"{where}[{label}]")
            if found:
                return found
        return None
    if stored != current:
        return f"{where}: {json.dumps(stored)} there, {json.dumps(current)} now"
    return None


def open_storage(
    url: str, heartbeat: int, on_stale: Callable[[optuna.study.Study, optuna.trial.FrozenTrial], None]
) -> RDBStorage:
    """The study database for writing, with heartbeats: a trial whose worker has been silent for twice
    ``heartbeat`` seconds is marked FAIL and handed to ``on_stale`` (which re-queues it)."""
    import sqlalchemy
    from optuna.storages import RDBStorage

    def make() -> RDBStorage:
        return RDBStorage(
            url,
            engine_kwargs=engine_options(url),
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=on_stale,
        )

    for _ in range(TABLE_RACE_ATTEMPTS - 1):
        try:
            return make()
        # Two workers made the tables of a new database at once (PostgreSQL: DuplicateTable, a
        # ProgrammingError; a duplicate row: IntegrityError): they exist now, so the next try goes through.
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(random.uniform(0.2, 1.0))
    return _storage_or_error(make, url)


def _storage_or_error(make: Callable[[], RDBStorage], url: str) -> RDBStorage:
    """Optuna's storage, with its refusals (a schema of another Optuna version) as one line."""
    import sqlalchemy

    try:
        return make()
    except (RuntimeError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise _unreachable(shown(url), str(exc).strip().splitlines()[0]) from None
