"""Exceptions raised by music_attn.

Every error a user can cause is one of these (or a plain ``ValueError`` /
``FileNotFoundError`` from argument checking); the command line turns each into
a one-line ``error: ...`` message and exit code 2.
"""

import zipfile

__all__ = ["MusicAttnError", "MidiError", "TokenizerError", "CheckpointError", "OutputError", "TrainingDiverged",
           "input_error_message", "one_line"]

MAX_MESSAGE = 400          # characters of a one-line message at most


class MusicAttnError(Exception):
    """Base class of every music_attn error."""


class MidiError(MusicAttnError, ValueError):
    """A MIDI file could not be read: missing, not MIDI, truncated or corrupt.

    The message names the file and what is wrong with it.
    """


class TokenizerError(MusicAttnError, ValueError):
    """Tokens or a tokenizer config that cannot be used (unknown token, bad JSON)."""


class CheckpointError(MusicAttnError, ValueError):
    """A checkpoint that is not one, is truncated, or does not match its config."""


class OutputError(MusicAttnError, ValueError):
    """An output path that would destroy something: an input file, a directory,
    FIFO or device, or a path in a folder that does not exist.  Nothing was written."""


class TrainingDiverged(MusicAttnError):
    """The loss (or a weight) of a training run stopped being a finite number; the run stopped
    before saving anything non-finite, so the last checkpoint written is the last good one."""


def brief(value, limit=80):
    """``repr(value)`` cut to ``limit`` characters: what a message may show of a caller's value
    (never the whole of a large input)."""
    return shorten(repr(value), limit)


def shorten(text, limit):
    """``text`` as it is when it has at most ``limit`` characters, else cut to ``limit`` ending in '...'."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def input_error_message(exc):
    """The one-line message of an error a bad input causes, or None for an internal error.

    Bad inputs raise the library's errors, OS errors, malformed JSON / numbers / archives,
    or run out of memory, recursion or number range reading them."""
    if isinstance(exc, (MusicAttnError, OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile)):
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            text = f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
        return one_line(text)
    if isinstance(exc, MemoryError):
        return "out of memory: the input asks for more memory than this machine gives"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(exc, OverflowError):
        return one_line(f"a number in the input is too large ({exc})")
    return None


def one_line(text):
    """``text`` on one line (runs of whitespace made one space), cut to `MAX_MESSAGE` characters."""
    return shorten(" ".join(str(text).split()), MAX_MESSAGE)
