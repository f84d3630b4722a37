"""The README's Python examples and its command-line tour run as written and print what it shows."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
sys.path.insert(0, str(README.parent / "scripts"))

from refresh_docs import SKIP_LINE, run_readme, tour_steps  # noqa: E402


def test_readme_python_examples_print_what_they_show():
    results = run_readme(README)
    assert results, "the README shows no Python example"
    failed = [f"README.md:{line}: shows {example.want!r}, printed {got!r}"
              for line, example, got, passed in results if not passed]
    assert not failed, "\n".join(failed)


# ------------------------------------------------------------------ the command-line tour
def _tour():
    """(command, expected output lines) of every ``$ ...`` line of the README's tour, in order."""
    return [(command, expected) for command, expected, _ in tour_steps(README.read_text(encoding="utf-8"))]


def _same_output(got, expected):
    """Each shown line matches (a trailing ' ...' means 'starts with'; timing lines are skipped)."""
    got = [line for line in got if not SKIP_LINE.search(line)]
    expected = [line for line in expected if not SKIP_LINE.search(line)]
    if len(got) != len(expected):
        return False
    return all(g.startswith(e[:-4]) if e.endswith(" ...") else g == e for g, e in zip(got, expected))


def test_the_tour_starts_by_copying_the_examples_it_uses():
    commands = [c for c, _ in _tour()]
    assert commands and commands[0].startswith("music-attn examples")
    named = set(re.findall(r"[\w-]+\.mid", " ".join(commands)))
    assert {"the-minstrel-boy.mid", "drowsy-maggie.mid"} <= named


@pytest.mark.slow
def test_every_tour_command_runs_as_written_from_an_empty_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    python = f"{shlex.quote(sys.executable)} -m music_attn"
    for command, expected in _tour():
        shell = re.sub(r"(^|&& )music-attn ", lambda m: f"{m.group(1)}{python} ", command)
        run = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        shown_error = bool(expected) and expected[0].startswith("error: ")
        assert run.returncode == (2 if shown_error else 0), f"{command}: {run.stderr}"
        got = run.stderr.splitlines() if shown_error else run.stdout.splitlines() + run.stderr.splitlines()
        if command.startswith("music-attn train"):
            assert any(line.startswith("wrote ") for line in got), got
        else:
            assert _same_output(got, expected), f"{command}\nREADME shows:\n" + "\n".join(expected) + \
                "\nthe command printed:\n" + "\n".join(got)


# ------------------------------------------------------------------ the guide, not a lab notebook
def test_the_readme_reads_in_five_minutes():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 400


def test_the_set_up_block_holds_the_demo_and_the_test_commands():
    text = README.read_text(encoding="utf-8")
    setup = text[text.index("## Set-up"):].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    assert commands == ['pip install ".[plot]" && music-attn demo', 'pip install -e ".[test]" && python -m pytest -q']


def test_every_module_of_the_package_is_named_in_the_module_list():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Modules"):].split("\n## ", 1)[0]
    package = README.parent / "music_attn"
    for path in package.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py") or path.parent.name == "cli":
            continue
        named = (f"`{path.stem}`", f"`{path.parent.name}/{path.stem}`", f"`{path.parent.name}/`, `demo`")
        assert any(n in section for n in named), \
            f"{path.relative_to(package)} is not in the README's module list"


def test_linked_docs_and_source_checkout_paths_exist():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(((?:docs|data)/[^)#]+)\)", text):
        assert (README.parent / target).exists(), target
    for path in re.findall(r"(?<![\w/])((?:data|benchmarks|scripts)/[\w./-]+\.(?:mid|npz|py))", text):
        assert (README.parent / path).exists(), path


@pytest.mark.slow
def test_the_source_checkout_commands_run_from_the_repository_root(tmp_path):
    """The JSB lines outside the tour, as written, from the root (outputs redirected to tmp_path)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The JSB Chorales model"):].split("\n## ", 1)[0]
    commands = [line[2:] for line in section.splitlines() if line.startswith("$ music-attn ")]
    assert len(commands) == 2
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    for command in commands:
        argv = [sys.executable, "-m", "music_attn"] + shlex.split(command)[1:]
        if "generate" in argv:
            argv[argv.index("-o") + 1] = str(tmp_path / "continued.mid")
        else:
            argv += ["-o", str(tmp_path / "page.html")]
        run = subprocess.run(argv, cwd=README.parent, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{command}: {run.stderr}"
        assert run.stdout.startswith(("AttentionMaps(", "wrote ")), run.stdout
