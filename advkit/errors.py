"""Exceptions that the CLI turns into one line on stderr and a documented exit status.

Exit statuses (docs/cli.md): 2 a setting, file or name to fix; 3 training diverged (non-finite loss or
weights); 74 a file could not be written (disk full, read-only); 75 and 130 a run stopped by a signal
after saving a checkpoint to resume from (see :mod:`advkit.interrupts`).
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_IO = 74  # EX_IOERR of sysexits.h
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later (requeue), after SIGTERM or SIGUSR1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


class AdvkitError(Exception):
    """A problem the user can fix: bad option, missing file, unknown name.

    The CLI prints ``advkit: error: <message>`` and exits with ``exit_status`` (2), never a traceback.
    """

    exit_status = EXIT_USAGE


class OptionError(AdvkitError):
    """A component option that is unknown, malformed or out of range."""


class PluginError(AdvkitError):
    """A plugin that cannot be found, loaded, or is claimed by two distributions."""


class RunDirectoryBusy(AdvkitError):
    """Another process holds the run directory's lock (it is training or resuming there)."""


class TrainingDiverged(AdvkitError):
    """The loss or the weights became NaN/inf; the checkpoints keep the last finite epoch."""

    exit_status = EXIT_DIVERGED


class WriteFailed(AdvkitError):
    """A file could not be written (disk full, read-only filesystem); the previous file is untouched."""

    exit_status = EXIT_IO
