"""The red team's classes: kills, races on outputs, odd output names, big valid files, injected
text, damaged checkpoints and bad API arguments.  Processes are really killed where a kill is the
case; every child runs under a time limit."""

import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from music_attn.cli import main
from music_attn.core.model import ModelConfig, init_model
from music_attn.errors import CheckpointError, MidiError, MusicAttnError
from music_attn.music.tokenizer import RemiTokenizer
from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint
from music_attn.training.data import shipped_melodies

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT = 60
TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "2",
        "--eval-every", "0", "--quiet"]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "MUSIC_ATTN_DEBUG": "", "OPENBLAS_NUM_THREADS": "1",
            "XDG_CACHE_HOME": "/nonexistent/cache", **extra}


def _run(argv, cwd, timeout=TIME_LIMIT, **kwargs):
    return subprocess.run([sys.executable, "-m", "music_attn", *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def _start(argv, cwd):
    return subprocess.Popen([sys.executable, "-m", "music_attn", *argv], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


class _Done:
    """What an in-process run of the command line gave: returncode, stdout, stderr."""

    def __init__(self, code, captured):
        self.returncode, self.stdout, self.stderr = code, captured.out, captured.err


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path_factory):
    """Run the command line in this process (no interpreter start-up): ``cli(argv, cwd)``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))

    def run(argv, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        return _Done(main([str(a) for a in argv]), capsys.readouterr())
    return run


def _wait_for(path, child, limit=TIME_LIMIT):
    """Wait until ``path`` exists (the child's first checkpoint); fails if the child ends first."""
    deadline = time.monotonic() + limit
    while not Path(path).exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def _one_error_line(err, *words):
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def tunes(tmp_path):
    folder = tmp_path / "tunes"
    folder.mkdir()
    for p in shipped_melodies():
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture
def tiny(tmp_path):
    tokenizer = RemiTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)
    path = tmp_path / "tiny.npz"
    save_checkpoint(path, init_model(config, np.random.default_rng(0), tokenizer=tokenizer))
    return path


# ================================================================== training runs and datasets
def _endless_run(tunes, out, cwd):
    """A training child of 100,000 steps with no scheduled checkpoint, once it has saved ``out``
    (after its first step, long before its last); killed if it never does."""
    child = _start(["train", str(tunes), "-o", str(out), "--steps", "100000", "--checkpoint-every", "0", *TINY],
                   cwd)
    try:
        _wait_for(out, child)
    except BaseException:
        child.kill()
        raise
    return child


@pytest.mark.slow
def test_a_run_killed_with_sigkill_before_its_first_scheduled_checkpoint_resumes(tunes, tmp_path):
    out = tmp_path / "m.npz"
    child = _endless_run(tunes, out, tmp_path)
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=TIME_LIMIT)
    finally:
        child.kill()
    step = load_checkpoint(out).train_state["meta"]["step"]
    assert step >= 1
    done = _run(["train", str(tunes), "-o", str(out), "--resume", "--steps", str(step + 2), *TINY], tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out).train_state["meta"]["step"] == step + 2


@pytest.mark.slow
def test_sigterm_stops_a_run_and_saves_like_ctrl_c(tunes, tmp_path):
    out = tmp_path / "m.npz"
    child = _endless_run(tunes, out, tmp_path)
    try:
        first = load_checkpoint(out).train_state["meta"]["step"]
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=TIME_LIMIT)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated; saved" in stdout and "--resume" in stdout and stderr == ""
    saved = load_checkpoint(out).train_state["meta"]["step"]
    assert first <= saved < 100000 and f"step {saved}:" in stdout


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(tunes, tmp_path, cli):
    out = tmp_path / "m.npz"
    proc = cli(["train", str(tunes), "-o", str(out), "--steps", "200", "--lr", "1e4", *TINY], tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "diverged", "lower --lr")
    assert "wrote" not in proc.stdout
    if out.exists():                                   # the checkpoint of a step before the loss broke
        ckpt = load_checkpoint(out)
        assert all(np.isfinite(v).all() for v in ckpt.model.params.values())
        assert f"keeps step {ckpt.train_state['meta']['step']}" in proc.stderr


def test_train_output_naming_a_training_file_is_refused_and_the_file_kept(tunes, tmp_path, cli):
    victim = sorted(tunes.iterdir())[0]
    before = victim.read_bytes()
    proc = cli(["train", str(tunes), "-o", str(victim), "--steps", "1", *TINY], tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "is the input file")
    assert victim.read_bytes() == before


_KILL_WHILE_TOKENIZING = """
import os, signal, sys
from music_attn.training import data, dataset
real, calls = data.tokenize_files, []
def tokenize_then_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
data.tokenize_files = tokenize_then_die
dataset._CHUNK = 3
from music_attn.music.tokenizer import RemiTokenizer
dataset.write_dataset(sys.argv[1], sys.argv[2], RemiTokenizer(), progress=False)
"""


def test_a_killed_dataset_write_leaves_no_partial_dataset_and_the_next_run_cleans_up(tunes, tmp_path, cli):
    out = tmp_path / "ds"
    killed = subprocess.run([sys.executable, "-c", _KILL_WHILE_TOKENIZING, str(tunes), str(out)], env=_env(),
                            capture_output=True, timeout=TIME_LIMIT)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ma-")]      # its half-built folder
    proc = cli(["tokenize", str(tunes), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "tunes"]
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "tokens.u16"]
    assert len(json.loads((out / "index.json").read_text())["files"]) == len(shipped_melodies())


def test_a_hostile_training_state_is_refused_in_one_line(tunes, tmp_path, tiny, cli):
    model = load_checkpoint(tiny).model
    out = tmp_path / "m.npz"
    for bad in ({"optimizer_t": -1}, {"step": -3}, {"step": 2.5}, {"history": "none"}):
        meta = {"step": 1, "optimizer_t": 1, "rng": {"bit_generator": "PCG64",
                                                     "state": np.random.default_rng(0).bit_generator.state},
                "config": {"seq_len": 32, "batch_size": 2}, "history": [], **bad}
        arrays = {f"{m}/{k}": np.zeros_like(v) for m in "mv" for k, v in model.params.items()}
        save_checkpoint(out, model, train_state={"meta": meta, "arrays": arrays})
        proc = cli(["train", str(tunes), "-o", str(out), "--resume", "--quiet"], tmp_path)
        assert proc.returncode == 2, (bad, proc.stderr)
        _one_error_line(proc.stderr, "m.npz", "unusable training state")


# ================================================================== writes
_KILL_BETWEEN_RENAMES = """
import os, signal, sys
from music_attn._io import atomic_outputs
real, calls = os.replace, []
def replace_then_die(src, dst):
    real(src, dst)
    calls.append(dst)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace_then_die
with atomic_outputs([sys.argv[1], sys.argv[2]]) as (a, b):
    a.write_text("new page")
    b.write_text("new json")
"""


def test_a_multi_file_write_killed_between_its_renames_is_rolled_back_by_the_next_write(tmp_path):
    from music_attn._io import atomic_write
    page, data = tmp_path / "o.html", tmp_path / "o.json"
    page.write_text("old page")
    data.write_text("old json")
    killed = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_RENAMES, str(page), str(data)], env=_env(),
                            capture_output=True, timeout=TIME_LIMIT)
    assert killed.returncode == -signal.SIGKILL
    assert page.read_text() == "new page" and data.read_text() == "old json"   # the kill came between them
    with atomic_write(tmp_path / "other.txt", "w") as f:                        # the next write in the folder
        f.write("x")
    assert page.read_text() == "old page" and data.read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.html", "o.json", "other.txt"]


def test_a_read_only_output_is_refused_unless_force(tmp_path, cli):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(RemiTokenizer().encode(shipped_melodies()[0]).ids.tolist()))
    out = tmp_path / "locked.mid"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    proc = cli(["decode", str(ids), "-o", str(out)], tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "locked.mid", "read-only", "--force")
    assert out.read_bytes() == b"keep me"
    proc = cli(["decode", str(ids), "-o", str(out), "--force"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(b"MThd") and stat.S_IMODE(out.stat().st_mode) == 0o444


def test_an_output_name_ending_in_a_slash_is_refused_not_written_as_a_file(tmp_path, cli):
    ids = tmp_path / "ids.json"
    ids.write_text("[1, 2, 3]")
    proc = cli(["decode", str(ids), "-o", "newdir/"], tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "newdir/", "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.json"]


def test_an_output_name_of_80_cjk_characters_is_written(tmp_path, cli):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(RemiTokenizer().encode(shipped_melodies()[0]).ids.tolist()))
    name = "\u66f2" * 80 + ".mid"
    assert len(name.encode()) == 244
    proc = cli(["decode", str(ids), "-o", name], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / name).read_bytes().startswith(b"MThd")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ids.json", name])


def _small_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))


def test_every_os_error_of_a_write_names_the_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "music_attn", "examples", "--copy"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=TIME_LIMIT, preexec_fn=_small_files)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, ".mid", "too large")
    assert "[Errno" not in proc.stderr
    assert list(tmp_path.iterdir()) == []                                    # all or none


# ================================================================== cost out of proportion to the input
def _one_long_note(path, ticks):
    body = b"\x00\x90\x3c\x40" + _vlq(ticks) + b"\x80\x3c\x40\x00\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1) + b"MTrk" + struct.pack(">I", len(body)) + body)
    return path


def _vlq(n):
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.insert(0, (n & 0x7F) | 0x80)
    return bytes(out)


def test_a_note_held_for_millions_of_beats_gives_a_page_of_the_size_one_note_needs(tmp_path, cli):
    for ticks in (2**22, 2**27):
        source = _one_long_note(tmp_path / f"long{ticks}.mid", ticks)
        assert source.stat().st_size < 50
        proc = cli(["inspect", str(source), "-o", "p.html", "--json", "p.json", "--force"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "p.html").stat().st_size < 500_000           # a melody's page is ~1 MB
        assert json.loads((tmp_path / "p.json").read_text())["notes"][0]["pitch"] == 60


def test_inspect_past_the_memory_budget_is_refused_in_one_line_before_the_model_runs(tmp_path):
    melody = shipped_melodies()[0]
    env = _env(MUSIC_ATTN_MEMORY_BUDGET="1M")           # not even windows of 64 tokens fit
    proc = subprocess.run([sys.executable, "-m", "music_attn", "inspect", str(melody), "-o", "p.html"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIME_LIMIT)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, melody.name, "memory budget of 1 MiB", "MUSIC_ATTN_MEMORY_BUDGET", "--bars")
    assert list(tmp_path.iterdir()) == []


def test_a_piece_too_long_for_the_budget_at_the_models_window_is_read_in_narrower_windows(monkeypatch):
    from music_attn import attention_maps, load_model
    from music_attn.inspect.windows_read import _memory_needed
    model, melody = load_model(), shipped_melodies()[0]
    full = attention_maps(model, melody)
    T = full.n_tokens
    budget = (_memory_needed(model, T, model.config.max_len) + _memory_needed(model, T, 256)) // 2
    monkeypatch.setenv("MUSIC_ATTN_MEMORY_BUDGET", str(budget))
    narrow = attention_maps(model, melody)
    assert narrow.window < model.config.max_len and _memory_needed(model, T, narrow.window) <= budget
    assert f"read in windows of {narrow.window}" in narrow.notice
    assert "read in windows of" not in full.notice and full.window == model.config.max_len


@pytest.mark.slow
def test_a_default_budget_keeps_a_50000_note_file_inside_2_gib(tmp_path):
    from midi_factory import midi_file, note_events, save, track
    notes = [(48 + i % 37, 60 * i, 60 * i + 50, 64) for i in range(50_000)]
    source = save(midi_file(track(note_events(notes))), tmp_path / "big.mid")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
    proc = subprocess.run([sys.executable, "-m", "music_attn", "inspect", str(source), "-o", "p.html"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIME_LIMIT,
                          preexec_fn=limit)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "big.mid", "memory budget", "choose a passage")


def test_many_samples_are_generated_in_batches_that_give_the_same_music(tiny, monkeypatch):
    from music_attn.runtime import generate as G
    model = load_checkpoint(tiny).model
    rngs = lambda: [np.random.default_rng(s) for s in range(7)]            # noqa: E731
    whole = G.generate(model, rng=rngs(), num_samples=7, max_new_tokens=12)
    monkeypatch.setenv("MUSIC_ATTN_MEMORY_BUDGET", "1K")                   # one sample at a time
    assert G.batch_size(model, 10_000) == 1
    batched = G.generate(model, rng=rngs(), num_samples=7, max_new_tokens=12)
    assert [list(g.ids) for g in batched] == [list(g.ids) for g in whole]
    monkeypatch.delenv("MUSIC_ATTN_MEMORY_BUDGET")
    assert 1 < G.batch_size(load_checkpoint(tiny).model, 10_000) <= G.MAX_BATCH


# ================================================================== many tracks
def _tracks_file(path, n):
    empty = b"MTrk" + struct.pack(">I", 4) + b"\x00\xff\x2f\x00"
    note = b"\x00\x90\x3c\x40\x60\x80\x3c\x40\x00\xff\x2f\x00"
    with_note = b"MTrk" + struct.pack(">I", len(note)) + note
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 1, n, 96) + with_note + empty * (n - 2) + with_note)
    return path


@pytest.mark.slow
def test_files_with_up_to_65535_tracks_are_continued_or_refused_truthfully(tmp_path, tiny):
    from music_attn.music.midi import read_midi
    for n in (32_767, 32_768):
        source = _tracks_file(tmp_path / f"t{n}.mid", n)
        proc = _run(["generate", "-m", str(tiny), "--prompt", str(source), "--tokens", "6", "-o", f"g{n}.mid"],
                    tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = (tmp_path / f"g{n}.mid").read_bytes()
        assert struct.unpack(">H", out[10:12])[0] == n + 1                   # every track, plus the new one
        assert out[14:].startswith(source.read_bytes()[14:])                 # the prompt as it was
        assert read_midi(tmp_path / f"g{n}.mid").notes["track"].min() == 0
    source = _tracks_file(tmp_path / "t65535.mid", 65_535)
    proc = _run(["generate", "-m", str(tiny), "--prompt", str(source), "--tokens", "6", "-o", "g.mid"], tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "65,535 tracks", "no room")


# ================================================================== models with bad numbers
def _with_weights(path, out, change):
    ckpt = load_checkpoint(path)
    change(ckpt.model.params)
    entries = {}
    with zipfile.ZipFile(path) as z:                # save_checkpoint would write anything: build by hand
        for name in z.namelist():
            entries[name] = z.read(name)
    import io
    for key, value in ckpt.model.params.items():
        buffer = io.BytesIO()
        np.save(buffer, value)
        entries[f"param/{key}.npy"] = buffer.getvalue()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out


@pytest.mark.parametrize("kind", ["nan", "inf", "1e38"])
def test_checkpoints_with_nan_inf_or_absurd_weights_are_refused_at_load_naming_the_file(tmp_path, tiny, kind, cli):
    def change(params):
        head = params[sorted(params)[-1]]
        if kind == "1e38":
            for v in params.values():
                v *= 1e38
        else:
            head.flat[0] = float(kind)
    bad = _with_weights(tiny, tmp_path / f"{kind}.npz", change)
    with pytest.raises(CheckpointError, match=f"{kind}.npz"):
        load_checkpoint(bad)
    for argv in (["inspect", str(shipped_melodies()[0]), "-m", str(bad), "-o", "p.html"],
                 ["generate", "-m", str(bad), "--tokens", "4", "-o", "g.mid"]):
        proc = cli(argv, tmp_path)
        assert proc.returncode == 2
        _one_error_line(proc.stderr, f"{kind}.npz", "not a usable model")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{kind}.npz", "tiny.npz"])


def test_scores_that_overflow_at_run_time_are_refused_not_sampled():
    from music_attn.runtime.generate import next_token_distribution
    with pytest.raises(MusicAttnError, match="not finite"):
        next_token_distribution(np.array([0.0, np.inf, 1.0]))
    with pytest.raises(MusicAttnError, match="not finite"):
        next_token_distribution(np.array([0.0, np.nan, 1.0]))


# ================================================================== terminal and page text
def test_terminal_controls_in_file_names_never_reach_the_terminal(tmp_path, cli):
    folder = tmp_path / "tunes"
    folder.mkdir()
    shutil.copy(shipped_melodies()[0], folder / "good.mid")
    (folder / "evil\x1b]0;owned\x07\x1b[2J.mid").write_bytes(b"MThd not really")
    (folder / "\u202eevil.mid").write_bytes(b"")
    proc = cli(["train", str(folder), "-o", "m.npz", "--steps", "1", *TINY], tmp_path)
    tokenize = cli(["tokenize", *map(str, sorted(folder.iterdir()))], tmp_path)
    for text in (proc.stdout, proc.stderr, tokenize.stdout, tokenize.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "evil\\x1b]0;owned\\x07" in proc.stderr + tokenize.stderr
    assert "\\u202eevil.mid" in tokenize.stderr


def test_bidi_overrides_in_names_and_midi_texts_are_escaped_on_the_page_and_in_json(tmp_path, tiny, cli):
    from midi_factory import midi_file, note_events, save, track
    import mido
    events = note_events([(60 + i, 96 * i, 96 * i + 90, 64) for i in range(8)])
    events.append((0, mido.MetaMessage("track_name", name="abc\u202edef\u2066")))
    events.append((0, mido.MetaMessage("lyrics", text="la\u202ela")))
    mid = midi_file(track(events), ticks_per_beat=96)
    mid.charset = "utf-8"
    source = save(mid, tmp_path / "tune\u202e.mid")
    proc = cli(["inspect", str(source), "-m", str(tiny), "-o", "p.html", "--json", "p.json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    page, data = (tmp_path / "p.html").read_text(encoding="utf-8"), (tmp_path / "p.json").read_text()
    decoded = json.dumps(json.loads(data), ensure_ascii=False)
    for text in (page, decoded):
        assert not set(text) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
    assert "abc\\\\u202edef" in decoded and "tune\\\\u202e.mid" in decoded


# ================================================================== the Python API
@pytest.mark.parametrize("kwargs, error", [
    ({"temperature": float("nan")}, ValueError), ({"temperature": float("inf")}, ValueError),
    ({"temperature": "hot"}, TypeError), ({"top_k": 1.7}, TypeError), ({"top_k": 0}, ValueError),
    ({"top_p": float("nan")}, ValueError), ({"max_new_tokens": -5}, ValueError),
    ({"max_new_tokens": 2.5}, TypeError), ({"num_samples": 0}, ValueError), ({"n_bars": -1}, ValueError)])
def test_generate_refuses_bad_arguments_with_a_short_message(tiny, kwargs, error):
    from music_attn import generate
    model = load_checkpoint(tiny).model
    with pytest.raises(error) as info:
        generate(model, rng=np.random.default_rng(0), **kwargs)
    assert len(str(info.value)) < 120 and list(kwargs)[0] in str(info.value)


@pytest.mark.parametrize("source", [b"\x00" * 2**20, list(range(10**5)), np.zeros(10**6)],
                         ids=["bytes", "list", "array"])
def test_error_messages_never_hold_the_whole_input(tiny, source):
    from music_attn import attention_maps
    model = load_checkpoint(tiny).model
    with pytest.raises((MidiError, TypeError, ValueError)) as info:
        attention_maps(model, source)
    assert len(str(info.value)) < 200
