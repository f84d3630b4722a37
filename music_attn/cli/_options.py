"""Option types and defaults shared by the subcommands.

Each type checks one option's value and says what is wrong in words that argparse
prefixes with the flag (``--seq-len must be an integer >= 1, got 0``).  Defaults
come from where the library defines them (a config dataclass field or a
function's keyword), so the command line and the library never disagree.
"""

import argparse
import dataclasses
import inspect
import math
import sys

from music_attn._io import numbered_outputs  # noqa: F401 -- re-exported for the commands

__all__ = ["integer", "real", "default_of", "HelpFormatter", "numbered_outputs", "add_force"]


def integer(low=None, high=None):
    """An argparse type: an int in [low, high]."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        _check_range(value, text, low, high, "an integer")
        return value
    parse.__name__ = "integer"
    return parse


def real(low=None, high=None, *, low_open=False):
    """An argparse type: a finite float in [low, high] (or (low, high] with ``low_open``)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low_open and value <= low:
            raise argparse.ArgumentTypeError(f"must be > {low}, got {text}")
        _check_range(value, text, None if low_open else low, high, "a number")
        return value
    parse.__name__ = "number"
    return parse


def _check_range(value, text, low, high, what):
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"must be {what} >= {low}, got {text}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be {what} <= {high}, got {text}")


def default_of(owner, name):
    """The default of field ``name`` of a dataclass, or of keyword ``name`` of a function."""
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        return field.default
    return inspect.signature(owner).parameters[name].default


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to every option that has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = any(action.default is x for x in (None, False, argparse.SUPPRESS))
        if "%(default)" in text or "default:" in text or hidden:
            return text
        return f"{text} (default: %(default)s)"


def add_force(parser):
    """The ``--force`` option of a command that writes files: replace read-only ones too."""
    parser.add_argument("--force", action="store_true",
                        help="replace an output file even when it is read-only (it keeps its permission bits)")


def note_dropped_drums(path, n, kept=""):
    """The one stderr line every command prints when it left drum notes out of what the model reads."""
    if n:
        extra = f"; {kept}" if kept else ""
        sys.stderr.write(f"note: {path}: {n} drum notes left out (--drums keeps them){extra}\n")
