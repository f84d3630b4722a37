"""The guide's "Your own model" and "Training beyond one process" examples (docs/guide.md) run and print what
they show (skipped when the extras they import are not installed)."""

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "docs" / "guide.md"   # these sections left the README for it


def _section_blocks(title):
    """The ```py doctest blocks of one ``## title`` section of the README."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```py\n(.*?)```", section, flags=re.S)


def _run(blocks, name):
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for i, block in enumerate(blocks):
        runner.run(parser.get_doctest(block, {}, f"{name} block {i}", str(README), 0))
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_your_own_model_example_runs(tmp_path, monkeypatch):
    for module in ("torch", "transformers", "miditok", "symusic"):
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)                       # it writes its JSON here
    _run(_section_blocks("Your own model"), "Your own model")
    assert (tmp_path / "gpt2_attention.json").stat().st_size > 0


def test_training_beyond_one_process_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    _run(_section_blocks("Training beyond one process"), "Training beyond one process")
