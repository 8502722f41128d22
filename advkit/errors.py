"""Exceptions that the CLI turns into a one-line message and exit status 2."""

from __future__ import annotations


class AdvkitError(Exception):
    """A problem the user can fix: bad option, missing file, unknown name.

    The CLI prints ``advkit: error: <message>`` and exits with status 2, never a traceback.
    """


class OptionError(AdvkitError):
    """A component option that is unknown, malformed or out of range."""


class PluginError(AdvkitError):
    """A plugin that cannot be found, loaded, or is claimed by two distributions."""
