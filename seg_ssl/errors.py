"""The errors a user can act on. Each message is one line that names the file, key or value and
what was expected; the tools print it without a traceback (``tools/_common.py``).

This module imports nothing from seg_ssl, so every layer can raise these.
"""


def one_line(e: BaseException) -> str:
    """The user-facing line of an error; a DataError re-raised from a DataLoader worker carries
    the worker's traceback in its message, whose last line is the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split("\n"))


class UserError(Exception):
    """A mistake or a condition the user can fix; shown as one line."""


class ConfigError(UserError, ValueError):
    """A mistake in a config file, an override or a command-line argument; names the key."""


class DataError(UserError, ValueError):
    """Bad data on disk; names the file and what is wrong."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file is missing, unreadable, or holds more than plain data (refused
    unopened: ``seg_ssl.safe_load``); names the file."""


class SaveError(UserError):
    """A checkpoint or result could not be written (full disk, no permission); names the path."""


class WorkDirBusy(UserError):
    """Another live run holds the work dir; names it and the holder."""


class DistributedError(UserError, RuntimeError):
    """A process could not reach the others: joining the group or a collective timed out, or a peer
    died. One line naming the rank and what it waited for (raised by ``seg_ssl.engine.dist``)."""
