"""The teaching docs run: each doc's python blocks execute in order, their asserts hold and
what they print is what the ```text block under them shows."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
DOCS = ["attention.md", "one_head.md", "positions.md", "block.md", "cross_attention.md", "music.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def doc_blocks(text):
    """[(line, code, expected output or None)] for each python block of the markdown."""
    fences = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    blocks = []
    for n, (lang, body, start, end) in enumerate(fences):
        if lang != "python":
            continue
        nxt = fences[n + 1] if n + 1 < len(fences) else None
        follows = nxt is not None and nxt[0] == "text" and not text[end:nxt[2]].strip()
        blocks.append((text.count("\n", 0, start) + 1, body, nxt[1] if follows else None))
    return blocks


def normalise(out):
    return "\n".join(line.rstrip() for line in out.strip().splitlines())


@pytest.mark.parametrize("name", DOCS)
def test_doc_has_runnable_examples(name):
    blocks = doc_blocks((DOCS_DIR / name).read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    assert sum(expected is not None for _, _, expected in blocks) >= 4


@pytest.mark.parametrize("name", DOCS)
def test_every_text_block_follows_a_python_block(name):
    text = (DOCS_DIR / name).read_text(encoding="utf-8")
    n_text = sum(lang == "text" for lang, _ in FENCE.findall(text))
    assert n_text == sum(expected is not None for _, _, expected in doc_blocks(text))


@pytest.mark.parametrize("name", DOCS)
def test_doc_blocks_run_and_print_what_the_doc_shows(name):
    with np.printoptions():     # the docs set print options; keep them from leaking
        _run_doc(DOCS_DIR / name)


def _run_doc(path):
    namespace = {"__name__": "docs_" + path.stem}
    for line, code, expected in doc_blocks(path.read_text(encoding="utf-8")):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
            except Exception as e:                       # name the block that failed
                pytest.fail(f"block at {path.name}:{line} raised {e!r}")
        if expected is not None:
            assert normalise(buf.getvalue()) == normalise(expected), f"output of block at {path.name}:{line}"
