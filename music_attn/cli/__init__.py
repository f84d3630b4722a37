"""The ``music-attn`` command line: argv is parsed here and only here.

Each subcommand lives in a small module of this package that exposes
``register(subparsers)``; its handler is a thin call into the library.

Exit codes: 0 success; 2 bad input (one line ``error: ...`` on stderr: a bad
option, file, JSON, checkpoint, an output path that would destroy something, an
input too large for memory); 70 an internal error (one line asking for a report;
the traceback with ``--debug`` or ``MUSIC_ATTN_DEBUG=1``); 130 interrupted.
A closed stdout (``music-attn demo | head``) ends the command quietly.
Everything printed goes through :class:`music_attn._text.SafeStream`, so a file
name or MIDI text cannot send raw terminal controls (ESC, BEL) or bidi overrides.
"""

import argparse
import importlib
import os
import re
import sys
import traceback

from music_attn.cli._options import HelpFormatter
from music_attn.errors import input_error_message, one_line as _one_line

__all__ = ["main", "build_parser", "EXIT_BAD_INPUT", "EXIT_INTERNAL"]

# Subcommand modules, in the order `music-attn --help` lists them.
_COMMANDS = ("examples", "tokens", "train", "generate", "harmonize", "inspect", "demo", "bench")
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70
_REPORT = "please report it with the command you ran (add --debug for the traceback)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, with exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        match = re.match(r"argument (\S+): (.*)", message, flags=re.S)
        if match:
            flag, rest = match.group(1).split("/")[-1], match.group(2)
            message = f"{flag} {rest}" if rest.startswith("must") else f"{flag}: {rest}"
        sys.stderr.write(f"error: {_one_line(message)} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser():
    parser = _Parser(
        prog="music-attn",
        description="Attention over music: tokenize MIDI, train, generate and look inside the model.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error (also MUSIC_ATTN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(f"music_attn.cli.{name}").register(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an internal error (also MUSIC_ATTN_DEBUG=1)")
    return parser


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"music-attn {version('music_attn')}"
    except PackageNotFoundError:
        return "music-attn (not installed)"


def main(argv=None):
    """Run the command line; returns the process exit code."""
    from music_attn._text import SafeStream
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(sys.stdout), SafeStream(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:              # --help, --version, or a bad option (already reported)
        return exc.code
    debug = args.debug or os.environ.get("MUSIC_ATTN_DEBUG", "") not in ("", "0")
    try:
        code = args.func(args) or 0
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as exc:                                  # noqa: BLE001 -- the one place
        return _report(exc, debug)


def _report(exc, debug):
    """Print the one line for ``exc``; returns the exit code."""
    message = input_error_message(exc)
    if message is not None:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {message}\n")
        return EXIT_BAD_INPUT
    if debug:
        traceback.print_exc()
    sys.stderr.write(f"internal error: {_one_line(f'{type(exc).__name__}: {exc}')}; {_REPORT}\n")
    return EXIT_INTERNAL


def _stdout_closed():
    """The reader of stdout went away (``| head``): stop quietly, without a flush error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 0
