"""``python -m advkit``: the same command line as ``advkit`` (what torchrun and job scripts launch)."""

from .cli import main

main()
