"""The project's error base class: bad input that the user can fix (a file, key or value named in the message).

Entry points print these as one line and exit with status 2 instead of a traceback; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations


class ExcelError(Exception):
    """Bad input: a missing or corrupt file, an unknown config key, an incompatible checkpoint, absent weights."""


def user_message(err: BaseException) -> str:
    """The message of ``err`` as a user should read it: without the traceback a DataLoader worker wraps it in.

    torch re-raises a worker's exception as ``type(err)("Caught X in DataLoader worker process k.\\nOriginal
    Traceback ...\\n<module>.X: <message>")``; this returns ``<message>``. Other errors give ``str(err)``.
    """
    text = str(err)
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    cls = type(err)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    marker = f"\n{name}: "
    cut = text.rfind(marker)
    return text[cut + len(marker):].strip() if cut >= 0 else text


class UsageError(ExcelError, ValueError):
    """A command-line argument or config value that does not fit the requested job."""
