"""Run a command that ends with the process that started it: ``python -m advkit.studies.tethered PID COMMAND...``.

A sweep or study killed outright (SIGKILL, a lost node's job step) must not leave its trainings running
unsupervised. This asks the kernel to send SIGTERM when the parent dies (Linux's PR_SET_PDEATHSIG, which
survives exec), then becomes COMMAND: the trainer then saves its last.pt and exits 75, as on any SIGTERM.
Elsewhere it simply runs COMMAND. A pre-exec hook in the parent could do the same, but is unsafe in a
process with threads.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(75)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
