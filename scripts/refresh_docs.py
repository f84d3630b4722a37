"""Rewrite the printed outputs of the teaching docs and the README's Python examples.

Run from anywhere (it imports the package of the checkout it lives in):

    python scripts/refresh_docs.py            # rewrite what changed
    python scripts/refresh_docs.py --check    # report what differs, write nothing, exit 1 if anything does
    python scripts/refresh_docs.py --tour     # also re-run the README's command-line tour and rewrite
                                              # what each command prints (in an empty folder)

The teaching docs (``DOCS``) are run as ``tests/test_docs.py`` runs them: every ```python block
in order, in one namespace per doc, and the ```text block right under a python block shows what
it prints. The README's ``>>>`` examples are run as doctests, as ``tests/test_readme.py`` does.
This file holds the one implementation of both; the tests import it. After the shipped model or
the shipped melodies change, run it, then read the diff: the prose refers to printed numbers in
words, but a changed result can still change what a sentence should say.
"""

import argparse
import contextlib
import doctest
import io
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))      # this checkout's package, not another installed one

DOCS_DIR = ROOT / "docs"
README = ROOT / "README.md"
DOCS = ["attention.md", "one_head.md", "positions.md", "block.md", "cross_attention.md", "music.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


class BlockError(Exception):
    """A doc's python block raised; the message names the block (file:line) and the error."""


# ------------------------------------------------------------------ the teaching docs
def _python_blocks(text):
    """[(line, code, output span (start, end) of the text block's body, or None)] in order."""
    fences = [(m.group(1), m.start(), m.end(), m.start(2), m.end(2)) for m in FENCE.finditer(text)]
    blocks = []
    for n, (lang, start, end, body_start, body_end) in enumerate(fences):
        if lang != "python":
            continue
        nxt = fences[n + 1] if n + 1 < len(fences) else None
        follows = nxt is not None and nxt[0] == "text" and not text[end:nxt[1]].strip()
        blocks.append((text.count("\n", 0, start) + 1, text[body_start:body_end],
                       (nxt[3], nxt[4]) if follows else None))
    return blocks


def doc_blocks(text):
    """[(line, code, expected output or None)] for each python block of the markdown."""
    return [(line, code, text[span[0]:span[1]] if span else None) for line, code, span in _python_blocks(text)]


def normalise(out):
    return "\n".join(line.rstrip() for line in out.strip().splitlines())


def run_doc(path):
    """Run the python blocks of ``path`` in order; [(line, expected, printed)] of each block with a
    text block under it. Raises `BlockError` naming the block that failed."""
    text = Path(path).read_text(encoding="utf-8")
    namespace = {"__name__": "docs_" + Path(path).stem}
    results = []
    with np.printoptions():                              # the docs set print options; keep them from leaking
        for line, code, span in _python_blocks(text):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    exec(compile(code, f"{Path(path).name}:{line}", "exec"), namespace)
                except Exception as e:                   # name the block that failed
                    raise BlockError(f"block at {Path(path).name}:{line} raised {e!r}") from e
            if span is not None:
                results.append((line, text[span[0]:span[1]], buf.getvalue()))
    return results


def refreshed_doc(path):
    """(new text of ``path`` with every text block showing what its python block prints now,
    [lines of the python blocks whose output changed])."""
    text = Path(path).read_text(encoding="utf-8")
    printed = iter(run_doc(path))
    pieces, changed, at = [], [], 0
    for line, _, span in _python_blocks(text):
        if span is None:
            continue
        _, expected, got = next(printed)
        if normalise(got) != normalise(expected):
            changed.append(line)
            pieces += [text[at:span[0]], normalise(got) + "\n"]
            at = span[1]
    return "".join(pieces) + text[at:], changed


# ------------------------------------------------------------------ the README's doctests
class _Recorder(doctest.DocTestRunner):
    """A doctest runner that keeps what every example printed."""

    def __init__(self):
        super().__init__(optionflags=doctest.NORMALIZE_WHITESPACE)
        self.seen = []                                   # (example, got, passed)

    def report_success(self, out, test, example, got):
        self.seen.append((example, got, True))

    def report_failure(self, out, test, example, got):
        self.seen.append((example, got, False))

    def report_unexpected_exception(self, out, test, example, exc_info):
        self.seen.append((example, doctest._exception_traceback(exc_info), False))


def readme_python_blocks(text):
    """[(line of the block's first code line, code)] of each ```python block of the README."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def run_readme(path=README):
    """Run the README's ``>>>`` examples, all blocks in order as `tests/test_readme.py` did;
    [(README line of the example's first output line, example, printed, passed)]."""
    text = Path(path).read_text(encoding="utf-8")
    parser, runner = doctest.DocTestParser(), _Recorder()
    out = []
    for i, (line, block) in enumerate(readme_python_blocks(text)):
        runner.seen = []
        runner.run(parser.get_doctest(block, {}, f"README block {i}", str(path), line - 1))
        for example, got, passed in runner.seen:
            out.append((line + example.lineno + len(example.source.splitlines()), example, got, passed))
    return out


def refreshed_readme(path=README):
    """(README text with every failing example's expected output replaced by what it printed,
    [README lines of the outputs replaced])."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    changed = []
    for first, example, got, passed in reversed(run_readme(path)):
        if passed:
            continue
        if example.exc_msg is not None or "Traceback (most recent call last)" in got:
            raise BlockError(f"README.md:{first - len(example.source.splitlines())} raised:\n{got}")
        n_old = len(example.want.splitlines())
        new = [" " * example.indent + g + "\n" for g in got.rstrip("\n").splitlines()]
        lines[first - 1:first - 1 + n_old] = new
        changed.append(first)
    return "".join(lines), sorted(changed)


# ------------------------------------------------------------------ the README's tour
SKIP_LINE = re.compile(r"Done in |\d+%\||^step \d+: ")    # timings, progress bars, training losses


def tour_steps(text):
    """(command, expected output lines, README line of the command) of every ``$ ...`` line of
    the README's tour, in order."""
    start = text.index("## A tour of the command line")
    end = text.index("\n## ", start + 1)
    first_line = text[:start].count("\n") + 1
    steps, fence, output = [], None, None
    for k, line in enumerate(text[start:end].splitlines()):
        if line.startswith("```"):
            fence = line[3:] if fence is None else None        # the language of an opening fence
            output = None
        elif fence == "" and line.startswith("$ "):
            output = []
            steps.append((line[2:], output, first_line + k))
        elif output is not None:
            output.append(line)
    return steps


def run_tour_command(command, cwd):
    """(exit code, stdout lines + stderr lines) of a tour command run as the README shows it."""
    import os
    import shlex
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = f"{shlex.quote(sys.executable)} -m music_attn"
    shell = re.sub(r"(^|&& )music-attn ", lambda m: f"{m.group(1)}{python} ", command)
    run = subprocess.run(["bash", "-c", shell], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return run.returncode, run.stdout.splitlines(), run.stderr.splitlines()


def refreshed_tour(path=README):
    """(README text with each tour command's output replaced by what it prints now, [lines])."""
    import tempfile
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    changed = []
    with tempfile.TemporaryDirectory() as folder:
        runs = [(cmd, expected, at, run_tour_command(cmd, folder)) for cmd, expected, at in tour_steps(text)]
    for cmd, expected, at, (code, out, err) in reversed(runs):
        if cmd.startswith("music-attn train"):
            continue                                    # losses vary with the machine: shown as run once
        error = bool(expected) and expected[0].startswith("error: ")
        got = [g for g in (err if error else out + err) if not (SKIP_LINE.search(g) and "Done in" not in g)]
        new = [(g[:len(e) - 4] + " ..." if e.endswith(" ...") else g) if i < len(expected) and
               (e := expected[i]) is not None else g for i, g in enumerate(got)]
        if new != expected:
            lines[at:at + len(expected)] = [g + "\n" for g in new]
            changed.append(at)
    return "".join(lines), sorted(changed)


# ------------------------------------------------------------------ command line
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report differences, write nothing, exit 1 if any")
    ap.add_argument("--tour", action="store_true", help="also re-run the README's command-line tour")
    args = ap.parse_args(argv)
    differs = False
    if args.tour:
        new, changed = refreshed_tour(README)
        if changed:
            differs = True
            if not args.check:
                README.write_text(new, encoding="utf-8")
        print(f"README.md tour: {'rewrote' if changed and not args.check else 'differs at' if changed else 'up to date'}"
              + (f" the output under line {', '.join(map(str, changed))}" if changed else ""))
    for path in [DOCS_DIR / name for name in DOCS] + [README]:
        try:
            new, changed = refreshed_readme(path) if path == README else refreshed_doc(path)
        except BlockError as e:
            print(f"{path.name}: {e}", file=sys.stderr)
            return 2
        rel = path.relative_to(ROOT)
        if not changed:
            print(f"{rel}: up to date")
            continue
        differs = True
        where = ", ".join(str(n) for n in changed)
        if args.check:
            print(f"{rel}: output differs under line {where}")
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{rel}: rewrote the output under line {where}")
    return 1 if args.check and differs else 0


if __name__ == "__main__":
    sys.exit(main())
