"""The teaching docs run: each doc's python blocks execute in order, their asserts hold and
what they print is what the ```text block under them shows (``scripts/refresh_docs.py`` runs
them the same way, and rewrites the text blocks when the model or the melodies change)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from refresh_docs import DOCS, DOCS_DIR, FENCE, BlockError, doc_blocks, normalise, run_doc  # noqa: E402


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
    try:
        results = run_doc(DOCS_DIR / name)
    except BlockError as e:
        pytest.fail(str(e))
    for line, expected, got in results:
        assert normalise(got) == normalise(expected), f"output of block at {name}:{line}"
