"""The ``music-attn`` command line: argv is parsed here and only here.

Each subcommand lives in a small module of this package that exposes
``register(subparsers)``; its handler is a thin call into the library.  Every
user error becomes one line ``error: ...`` on stderr and exit code 2.
"""

import argparse
import importlib
import sys

from music_attn.errors import MusicAttnError

__all__ = ["main", "build_parser"]

# Subcommand modules, in the order `music-attn --help` lists them.
_COMMANDS = ("tokens", "train", "generate", "inspect", "demo", "bench")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit with code 2."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser():
    parser = _Parser(
        prog="music-attn",
        description="Attention over music: tokenize MIDI, train, generate and look inside the model.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(f"music_attn.cli.{name}").register(sub)
    return parser


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"music-attn {version('music_attn')}"
    except PackageNotFoundError:
        return "music-attn (not installed)"


def main(argv=None):
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (MusicAttnError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {_one_line(exc)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


def _one_line(exc):
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())
