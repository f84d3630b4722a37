"""Hostile inputs to every command: one clear line, exit code 0 or 2, nothing left behind.

Each case runs ``python -m music_attn ...`` in a child process of its own, in a
folder of its own, under a memory limit (``RLIMIT_AS``) and a time limit, with
hostile MIDI, token JSON, checkpoints, option values and output paths.  The
cases run a few at a time in one module fixture; each test then checks one
case's result:

* the exit code is the one expected (0, or 2 for a refused input);
* stderr is empty on success, else exactly one line starting ``error:``, never a traceback;
* no file appears in the case's folder except the outputs of a success, and no
  temporary file anywhere;
* the shared inputs (the user's music, models, token files) are unchanged.
"""

import hashlib
import io
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import RemiTokenizer
from music_attn.runtime.checkpoint import save_checkpoint
from music_attn.training.data import shipped_melodies

MEMORY_LIMIT = 1536 * 2**20        # bytes of address space per command
TIME_LIMIT = 40                    # seconds per command (a hang fails long before the suite's limit)
WORKERS = 3
REPO = Path(__file__).resolve().parents[1]



@dataclass
class Case:
    """One command line and what it must do.  ``{name}`` in argv is a shared input's path."""
    id: str
    argv: list
    codes: tuple = (2,)
    words: str = ""                        # must appear in the error line
    outputs: tuple = ()                    # files a success may leave in the case's folder
    setup: Optional[Callable] = None       # setup(folder): make the links, FIFOs, ... it needs
    check: Optional[Callable] = None       # check(folder): more assertions afterwards


# ------------------------------------------------------------------ hostile inputs
def _vlq_midi(n_continuation):
    """A track whose first delta-time has ``n_continuation`` continuation bytes."""
    data = b"\x81" * n_continuation + b"\x00" + b"\x90\x3c\x40\x00\x80\x3c\x40\x00\xff\x2f\x00"
    return b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk" + len(data).to_bytes(4, "big") + data


def _text_midi(n_bytes):
    """A file with one track-name event of ``n_bytes`` bytes and one note."""
    text = b"caf\xc3\xa9 " * (n_bytes // 6)
    length, vlq = len(text), []
    while True:
        vlq.insert(0, (length & 0x7F) | (0x80 if vlq else 0))
        length >>= 7
        if not length:
            break
    data = b"\x00\xff\x03" + bytes(vlq) + text + b"\x00\x90\x3c\x40\x60\x80\x3c\x40\x00\xff\x2f\x00"
    return b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk" + len(data).to_bytes(4, "big") + data


def _npz_with(path, key, payload):
    """Copy of checkpoint ``path`` with member ``key``.npy replaced by raw bytes."""
    with zipfile.ZipFile(path) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    members[f"{key}.npy"] = payload
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    return buf.getvalue()


def _npy(array=None, *, header=None):
    buf = io.BytesIO()
    if header is not None:
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(b"\0" * 4096)
    else:
        np.save(buf, array)
    return buf.getvalue()


def _make_shared(folder):
    """Every shared input of the cases, written into ``folder``."""
    rng = np.random.default_rng(0)
    melody = shipped_melodies()[0].read_bytes()
    tokenizer = RemiTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)
    save_checkpoint(folder / "tiny.npz", init_model(config, rng, tokenizer=tokenizer))
    tiny = folder / "tiny.npz"
    good_config = config.to_dict()
    files = {
        "melody.mid": melody,
        "truncated.mid": melody[: len(melody) * 3 // 5],
        "random.mid": rng.bytes(3000),
        "empty.mid": b"",
        "header_only.mid": b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0",
        "many_tracks.mid": b"MThd\x00\x00\x00\x06\x00\x01\xff\xff\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
        "huge_vlq.mid": _vlq_midi(300_000),
        "long_text.mid": _text_midi(2 * 2**20),
        "deep.json": b"[" * 200_000 + b"]" * 200_000,
        "huge_settings.json": json.dumps({"tokenizer": {"type": "remi", "positions_per_beat": 10**9},
                                          "ids": [1, 2, 3]}).encode(),
        "huge_id.json": b'{"ids": [1, 100000000000000000000000000000]}',
        "digits.json": b'{"ids": [' + b"9" * 20_000 + b"]}",
        "nan_id.json": b'{"ids": [1, NaN]}',
        "binary.json": rng.bytes(500),
        "plain.npy": _npy(np.ones((4, 4))),
        "bomb.npz": _npz_with(tiny, "param/tok_emb", _npy(header={"descr": "<f4", "fortran_order": False,
                                                                  "shape": (10**6, 10**5)})),
        "wrong_dtype.npz": _npz_with(tiny, "param/ln_f.g", _npy(np.ones(16, dtype=np.int64))),
        "wrong_shape.npz": _npz_with(tiny, "param/ln_f.g", _npy(np.ones(17, dtype=np.float32))),
        "deep_config.npz": _npz_with(tiny, "model_config", _npy(np.array("[" * 100_000 + "]" * 100_000))),
        "inf_config.npz": _npz_with(tiny, "model_config",
                                    _npy(np.array(json.dumps({**good_config, "alpha": float("inf")})))),
        "huge_config.npz": _npz_with(tiny, "model_config",
                                     _npy(np.array(json.dumps({**good_config, "n_layers": 10**30})))),
        "random.npz": rng.bytes(5000),
        "truncated.npz": tiny.read_bytes()[: tiny.stat().st_size // 2],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "ids.json").write_text(json.dumps(tokenizer.encode(folder / "melody.mid").ids.tolist()))
    (folder / "a_folder").mkdir()
    os.mkfifo(folder / "fifo")


# ------------------------------------------------------------------ output-path set-ups
def _symlink(folder):
    (folder / "real").mkdir()
    (folder / "real" / "page.html").write_text("old page")
    (folder / "link.html").symlink_to(folder / "real" / "page.html")


def _symlink_kept(folder):
    assert (folder / "link.html").is_symlink()
    assert (folder / "real" / "page.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def _fifo(folder):
    os.mkfifo(folder / "out.pipe")


def _readonly(folder):
    (folder / "ro").mkdir()
    (folder / "ro").chmod(0o555)


def _existing_different(folder):
    (folder / shipped_melodies()[0].name).write_bytes(b"my own edits")


def _own_file_kept(folder):
    assert (folder / shipped_melodies()[0].name).read_bytes() == b"my own edits"


def _copy_melody(folder):
    shutil.copy(shipped_melodies()[0], folder / "tune.mid")


def _melody_kept(folder):
    assert (folder / "tune.mid").read_bytes() == shipped_melodies()[0].read_bytes()


def _a_file(folder):
    (folder / "not_a_dir").write_text("keep me")


def _devnull_kept(folder):
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def _resume_with_bad_rng(folder):
    import music_attn.runtime.checkpoint as ck
    model = ck.load_checkpoint(folder.parent.parent / "shared" / "tiny.npz").model
    meta = {"step": 1, "optimizer_t": 1, "rng": {"bit_generator": "seed", "state": {}}, "config": {}, "history": []}
    arrays = {f"{m}/{k}": np.zeros_like(v) for m in "mv" for k, v in model.params.items()}
    save_checkpoint(folder / "model.npz", model, train_state={"meta": meta, "arrays": arrays})
    (folder / "tunes").mkdir()
    shutil.copy(shipped_melodies()[0], folder / "tunes" / "a.mid")


# ------------------------------------------------------------------ the cases
def _cases():
    m = ["-m", "{tiny.npz}"]
    midi = [Case(f"{cmd}-{name}", argv(f"{{{name}.mid}}"), words=f"{name}.mid")
            for name in ["truncated", "random", "empty", "header_only", "many_tracks", "huge_vlq"]
            for cmd, argv in [("tokenize", lambda f: ["tokenize", f]),
                              ("inspect", lambda f: ["inspect", f, *m, "-o", "o.html"]),
                              ("generate", lambda f: ["generate", *m, "--prompt", f, "--tokens", "4", "-o", "o.mid"])]]
    midi += [
        Case("tokenize-long-text", ["tokenize", "{long_text.mid}", "--stats"], codes=(0, 2)),
        Case("tokenize-dev-zero", ["tokenize", "/dev/zero"], words="/dev/zero"),
        Case("tokenize-fifo", ["tokenize", "{fifo}"], words="fifo"),
        Case("inspect-fifo", ["inspect", "{fifo}", *m], words="FIFO"),
        Case("inspect-directory", ["inspect", "{a_folder}", *m], words="directory"),
        Case("generate-prompt-dev-zero", ["generate", *m, "--prompt", "/dev/zero", "-o", "o.mid"], words="/dev/zero"),
        Case("tokenize-good-and-bad", ["tokenize", "{melody.mid}", "{random.mid}", "--stats"], words="random.mid"),
    ]
    tokens = [Case(f"decode-{name}", ["decode", f"{{{name}.json}}", "-o", "o.mid"], words=f"{name}.json")
              for name in ("deep", "huge_id", "digits", "nan_id", "binary")]
    tokens += [
        Case("decode-huge-settings", ["decode", "{huge_settings.json}", "-o", "o.mid"],
             words="huge_settings.json"),
        Case("decode-fifo", ["decode", "{fifo}", "-o", "o.mid"], words="FIFO"),
        Case("decode-dev-zero", ["decode", "/dev/zero", "-o", "o.mid"], words="character device"),
        Case("decode-directory", ["decode", "{a_folder}", "-o", "o.mid"], words="directory"),
        Case("decode-bare-ids", ["decode", "{ids.json}", "-o", "o.mid"], codes=(0,), outputs=("o.mid",)),
    ]
    models = [Case(f"inspect-model-{name}", ["inspect", "{melody.mid}", "-m", f"{{{name}}}", "-o", "o.html"],
                   words=name)
              for name in ("plain.npy", "bomb.npz", "wrong_dtype.npz", "wrong_shape.npz", "deep_config.npz",
                           "inf_config.npz", "huge_config.npz", "random.npz", "truncated.npz", "fifo", "a_folder")]
    models += [Case("generate-model-bomb", ["generate", "-m", "{bomb.npz}", "-o", "o.mid"], words="bomb.npz"),
               Case("train-resume-bad-rng", ["train", "tunes", "--resume", "-o", "model.npz", "--quiet"],
                    words="random generator", setup=_resume_with_bad_rng)]
    options = [Case(f"generate-{flag}-{value}", ["generate", *m, f"--{flag}", value, "-o", "o.mid"], words=f"--{flag}")
               for flag, value in [("temperature", "nan"), ("temperature", "inf"), ("temperature", "-1"),
                                   ("top-p", "nan"), ("top-p", "0"), ("top-p", "1.5"), ("top-k", "-3"),
                                   ("bars", "0"), ("bars", "99999999999999999999"), ("tokens", "-1"),
                                   ("seed", "-1")]]
    options += [Case(f"train-{flag}-{value}", ["train", "{a_folder}", f"--{flag}", value, "-o", "m.npz"], words=f"--{flag}")
                for flag, value in [("lr", "nan"), ("lr", "inf"), ("lr", "0"), ("steps", "0"), ("warmup", "-5"),
                                    ("seq-len", "0"), ("batch-size", "-1"), ("d-model", "0"), ("alpha", "2"),
                                    ("heads", "3"), ("eval-every", "-1"), ("seq-len", "10000000000")]]
    options += [Case("inspect-window-0", ["inspect", "{melody.mid}", *m, "--window", "0"], words="--window"),
                Case("demo-seed-negative", ["demo", "--seed", "-1"], words="--seed")]
    outputs = [
        Case("inspect-output-is-input", ["inspect", "tune.mid", *m, "-o", "tune.mid"], words="is the input file",
             setup=_copy_melody, check=_melody_kept),
        Case("generate-output-is-prompt", ["generate", *m, "--prompt", "tune.mid", "--tokens", "4", "-o", "tune.mid"],
             words="is the input file", setup=_copy_melody, check=_melody_kept),
        Case("inspect-output-symlink", ["inspect", "{melody.mid}", *m, "-o", "link.html"], codes=(0,),
             setup=_symlink, check=_symlink_kept),
        Case("inspect-output-fifo", ["inspect", "{melody.mid}", *m, "-o", "out.pipe"], words="FIFO", setup=_fifo),
        Case("inspect-output-directory", ["inspect", "{melody.mid}", *m, "-o", "{a_folder}"], words="directory"),
        Case("inspect-output-missing-folder", ["inspect", "{melody.mid}", *m, "-o", "no/such/o.html"],
             words="folder no/such does not exist"),
        Case("inspect-json-missing-folder", ["inspect", "{melody.mid}", *m, "-o", "o.html", "--json", "no/o.json"],
             words="no/o.json"),
        Case("inspect-all-three", ["inspect", "{melody.mid}", *m, "-o", "o.html", "--json", "o.json", "--png", "o.png"],
             codes=(0,), outputs=("o.html", "o.json", "o.png")),
        Case("inspect-output-readonly-folder", ["inspect", "{melody.mid}", *m, "-o", "ro/o.html"], words="ro/o.html",
             setup=_readonly),
        Case("decode-output-dev-null", ["decode", "{ids.json}", "-o", "/dev/null"], words="character device",
             check=_devnull_kept),
        Case("examples-copy-over-own-file", ["examples", "--copy"], words="--force",
             setup=_existing_different, check=_own_file_kept),
        Case("demo-output-is-a-file", ["demo", "-o", "not_a_dir"], words="not a folder", setup=_a_file),
        Case("train-output-missing-folder", ["train", "{a_folder}", "-o", "no/m.npz"], words="no/m.npz"),
    ]
    return midi + tokens + models + options + outputs


CASES = _cases()


# ------------------------------------------------------------------ running them
def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(case, shared, folder):
    """Run one case in ``folder``; returns (returncode or 'timeout', stdout, stderr)."""
    if case.setup:
        case.setup(folder)
    argv = [_placed(a, shared) for a in case.argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUSIC_ATTN_DEBUG": "", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "music_attn", *argv], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=TIME_LIMIT, preexec_fn=_limits,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return "timeout", exc.stdout or "", exc.stderr or ""
    return proc.returncode, proc.stdout, proc.stderr


def _placed(arg, shared):
    """``arg`` with ``{name}`` replaced by the path of the shared input ``name``."""
    if arg.startswith("{") and arg.endswith("}"):
        return str(shared / arg[1:-1])
    return arg


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
            and stat.S_ISREG(p.lstat().st_mode)}


# One case of each kind runs by default; the other variants under the slow marker.
FAST = {"tokenize-truncated", "tokenize-random", "inspect-empty", "generate-header_only", "tokenize-many_tracks",
        "tokenize-dev-zero", "tokenize-fifo", "inspect-directory", "tokenize-good-and-bad", "decode-deep",
        "decode-digits", "decode-fifo", "decode-bare-ids", "inspect-model-plain.npy", "inspect-model-bomb.npz",
        "inspect-model-wrong_dtype.npz", "inspect-model-deep_config.npz", "inspect-model-huge_config.npz",
        "generate-temperature-nan", "generate-top-p-0", "generate-bars-99999999999999999999", "train-steps-0",
        "train-warmup--5", "train-lr-inf", "inspect-output-is-input", "inspect-output-symlink",
        "inspect-output-fifo", "inspect-output-missing-folder", "inspect-json-missing-folder",
        "decode-output-dev-null", "examples-copy-over-own-file"}


def _run_all(cases, root):
    """case id -> (code, stdout, stderr, files after, folder) of every case, a few at a time."""
    shared = root / "shared"
    shared.mkdir()
    _make_shared(shared)
    digest = _digest(shared)

    def run(case):
        folder = root / "cases" / case.id
        folder.mkdir(parents=True)
        code, out, err = _run(case, shared, folder)
        return case.id, (code, out, err, _tree(folder), folder)
    with ThreadPoolExecutor(WORKERS) as pool:
        done = dict(pool.map(run, cases))
    assert _digest(shared) == digest, "a command altered one of its inputs"
    assert not [p for p in root.rglob("*") if p.name.startswith(".ma-")], "temporary files were left behind"
    return done


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory):
    return _run_all([c for c in CASES if c.id in FAST], tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def slow_results(tmp_path_factory):
    return _run_all([c for c in CASES if c.id not in FAST], tmp_path_factory.mktemp("hostile_slow"))


def _params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


@pytest.mark.parametrize("case", _params([c for c in CASES if c.id in FAST]))
def test_hostile_input_gives_one_clear_line_and_leaves_nothing_behind(case, fast_results):
    _check(case, fast_results[case.id])


@pytest.mark.slow
@pytest.mark.parametrize("case", _params([c for c in CASES if c.id not in FAST]))
def test_more_hostile_variants_give_one_clear_line_and_leave_nothing_behind(case, slow_results):
    _check(case, slow_results[case.id])


def _check(case, result):
    if case.id == "inspect-output-readonly-folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    code, out, err, after, folder = result
    assert code != "timeout", f"no answer within {TIME_LIMIT} s"
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert code in case.codes, f"exit code {code}, stderr: {err!r}"
    if code == 0:
        assert err == "", err
    else:
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert case.words in err, err
    made = set(after) - _setup_files(case)
    allowed = set(case.outputs) if code == 0 else set()
    assert made <= allowed | _derived(case, code), f"left behind: {sorted(made - allowed)}"
    if case.check:
        case.check(folder)


def _setup_files(case):
    """Files a case's set-up makes (compared by name after the run)."""
    return {"real", "real/page.html", "link.html", "out.pipe", "ro", "tune.mid", "not_a_dir", "model.npz",
            "tunes", "tunes/a.mid", shipped_melodies()[0].name}


def _derived(case, code):
    """Outputs a success writes without naming them (the default page of inspect)."""
    if code == 0 and case.argv[0] == "inspect" and "-o" not in case.argv:
        return {f"{Path(case.argv[1]).stem}_attention.html"}
    return set()


def test_the_harness_covers_every_command_and_every_kind_of_hostile_input():
    commands = {c.argv[0] for c in CASES}
    assert commands >= {"tokenize", "decode", "inspect", "generate", "train", "demo", "examples"}
    assert len(CASES) >= 80 and FAST <= {c.id for c in CASES} and len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ process-level behaviour
def _child(argv, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUSIC_ATTN_DEBUG": ""}
    return subprocess.Popen([sys.executable, "-m", "music_attn", *argv], env=env, preexec_fn=_limits,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    melodies = [str(p) for p in shipped_melodies()] * 20          # ~200 kB of tokens: more than a pipe holds
    child = _child(["tokenize", *melodies], cwd=tmp_path)
    child.stdout.read(100)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=TIME_LIMIT) == 0 and err == ""


def test_an_internal_error_is_one_line_asking_for_a_report_and_debug_shows_the_traceback(monkeypatch, capsys):
    from music_attn import cli
    from music_attn.cli import tokens

    def bug(args):
        raise TypeError("unsupported operand")
    monkeypatch.setattr(tokens, "_tokenize", bug)
    assert cli.main(["tokenize", "x.mid"]) == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("internal error: TypeError: unsupported operand")
    assert "report" in err and "Traceback" not in err
    assert cli.main(["--debug", "tokenize", "x.mid"]) == cli.EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MUSIC_ATTN_DEBUG", "1")
    assert cli.main(["tokenize", "x.mid"]) == cli.EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------ options: one source of defaults
def test_train_defaults_are_the_config_dataclasses_defaults():
    from music_attn.cli import build_parser
    from music_attn.training.train import TrainConfig

    args = build_parser().parse_args(["train"])
    model, train = ModelConfig(vocab_size=1), TrainConfig()
    pairs = {"d_model": model.d_model, "layers": model.n_layers, "heads": model.n_heads,
             "positional": model.positional, "attention": model.attention, "window": model.window,
             "alpha": model.alpha, "batch_size": train.batch_size, "seq_len": train.seq_len, "lr": train.lr,
             "warmup": train.warmup, "eval_every": train.eval_every, "checkpoint_every": train.checkpoint_every,
             "seed": train.seed}
    assert {k: getattr(args, k) for k in pairs} == pairs
    assert model.positional == "relative" and train.checkpoint_every == 500


def test_every_option_of_every_command_explains_itself_and_shows_its_default():
    import argparse
    from music_attn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        text = parser.format_help()
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            shown = action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action.default, bool)
            if shown and action.option_strings:
                assert f"default: {action.default}" in " ".join(text.split()), (name, action.dest)
