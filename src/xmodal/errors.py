"""The one exception type for user mistakes.

A user error carries a single line naming where the problem is (file, line or field), what was
expected and what was found. The CLI prints only that line; `--debug` shows the traceback.
Internal invariants use `assert` instead, so a traceback always means a bug in xmodal.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XmodalError(Exception):
    """A mistake in user input (recipe, data, checkpoint, command line)."""


class ConfigError(XmodalError):
    """A recipe or override that does not fit the typed configuration."""


class DataError(XmodalError):
    """Media, manifest or store that cannot be used."""


class CheckpointError(XmodalError):
    """A checkpoint that is missing, corrupt, unsafe or of the wrong architecture."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
