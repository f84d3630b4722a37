"""What a musician meets (issue 25): tracks that share a name, note names in the key, drums,
continuing a file from Python, chorale voices and where a continuation starts.

Every file is built here with mido (``midi_factory``).
"""

import json
import subprocess
import sys

import mido
import numpy as np
import pytest

from midi_factory import midi_file, note_events, save, tempo, time_signature, track
from music_attn import continue_midi, generate, load_model
from music_attn.errors import MusicAttnError
from music_attn.inspect.inspector import AttentionMaps, attention_maps
from music_attn.inspect.viz import page_data
from music_attn.music import continuation as C
from music_attn.music import select
from music_attn.music.midi import read_midi
from music_attn.music.theory import drum_name, key_name, spell, spelled_names
from music_attn.music.tokenizers import GridTokenizer, RemiTokenizer

TPB = 96


@pytest.fixture(scope="module")
def model():
    return load_model()


def named(name, notes, channel, program=None):
    """A track: its name, an optional program change, then the notes (pitch, start, end, velocity)."""
    head = [(0, mido.MetaMessage("track_name", name=name))]
    if program is not None:
        head.append((0, mido.Message("program_change", channel=channel, program=program)))
    return track(head + note_events(notes, channel))


def serenade(path):
    """A conductor track, then three parts all called "Viola" (and a Cello): a serenade's layout."""
    line = lambda base, k: [(base + (i * k) % 5, i * TPB, (i + 1) * TPB, 70) for i in range(8)]  # noqa: E731
    mid = midi_file(track([(0, mido.MetaMessage("track_name", name="Serenade")), (0, tempo(96))]),
                    named("Viola", line(67, 2), 0, 41), named("Viola", line(62, 3), 1, 41),
                    named("Viola", line(55, 1), 2, 41), named("Cello", line(43, 2), 3, 42), ticks_per_beat=TPB)
    return save(mid, path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "music_attn", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


# --------------------------------------------------------------------------- 1. tracks that share a name


def test_a_name_several_tracks_share_is_refused_with_their_numbers(tmp_path):
    score = read_midi(serenade(tmp_path / "serenade.mid"))
    with pytest.raises(MusicAttnError, match=r"3 tracks with notes are named 'Viola' \(tracks 1, 2, 3\)"):
        select.keep_tracks(score, ["viola"], select.track_names(score))
    assert set(select.keep_tracks(score, ["2"]).notes["track"].tolist()) == {2}
    assert set(select.keep_tracks(score, ["Cello"], select.track_names(score)).notes["track"].tolist()) == {4}


def test_track_labels_show_the_number_and_the_name():
    assert select.track_label(2, "Viola") == "2 · Viola" and select.track_label(3, " ") == "track 3"


@pytest.mark.parametrize("command", ["inspect", "generate"])
def test_an_ambiguous_track_option_is_a_one_line_error_on_every_command(tmp_path, command):
    path = serenade(tmp_path / "serenade.mid")
    out = ["-o", tmp_path / "out.mid"] if command == "generate" else ["--json", tmp_path / "out.json"]
    args = [command, "--prompt", path] if command == "generate" else [command, path]
    run = run_cli(*args, "--track", "Viola", *out)
    assert run.returncode == 2 and "tracks 1, 2, 3" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("out.*"))


def test_the_json_tracks_are_indexed_by_note_track_and_the_page_labels_them(tmp_path, model):
    maps = attention_maps(model, serenade(tmp_path / "serenade.mid"))
    data = json.loads(maps.to_json())
    assert data["version"] == 3
    assert [t["label"] for t in data["tracks"]] == ["0 · Serenade", "1 · Viola", "2 · Viola", "3 · Viola", "4 · Cello"]
    assert [t["notes"] for t in data["tracks"]] == [0, 8, 8, 8, 8]
    first_of = {data["notes"][i]["track"]: data["notes"][i]["pitch"] for i in range(len(data["notes"]))[::-1]}
    assert first_of == {1: 67, 2: 62, 3: 55, 4: 43}                    # each part's own first note
    assert data["texts"]["tracks"] == ["Serenade", "Viola", "Viola", "Viola", "Cello"]
    page = page_data(maps)
    assert page["music"]["trackNames"] == ["1 · Viola", "2 · Viola", "3 · Viola", "4 · Cello"]
    assert page["tracks"] == page["music"]["trackNames"]


# --------------------------------------------------------------------------- 5. note names


@pytest.mark.parametrize("key, pitches, names", [
    ((6, "minor"), [66, 68, 69, 71, 73, 74, 75, 76, 77], ["F#4", "G#4", "A4", "B4", "C#5", "D5", "D#5", "E5", "E#5"]),
    ((9, "minor"), [69, 71, 72, 74, 76, 77, 78, 79, 80], ["A4", "B4", "C5", "D5", "E5", "F5", "F#5", "G5", "G#5"]),
    ((5, "major"), [65, 70, 61, 71], ["F4", "Bb4", "C#4", "B4"]),
    ((1, "minor"), [60, 61], ["B#3", "C#4"]),                          # the leading tone of C# minor
    ((0, "major"), [61, 63, 66, 68, 70], ["C#4", "Eb4", "F#4", "G#4", "Bb4"]),
])
def test_spelling_follows_the_key_with_raised_sixth_and_seventh_in_minor(key, pitches, names):
    assert [spell(p, key) for p in pitches] == names


def test_the_leading_tone_of_f_sharp_minor_is_e_sharp_in_a_piece(tmp_path, model):
    # F# harmonic minor up and down, a cadence E# - F#
    tune = [66, 68, 69, 71, 73, 74, 77, 78, 77, 74, 73, 71, 69, 68, 66, 73, 77, 78, 66]
    path = save(midi_file(named("Melody", [(p, i * TPB, (i + 1) * TPB, 80) for i, p in enumerate(tune)], 0)),
                tmp_path / "f-sharp-minor.mid")
    maps = attention_maps(model, path)
    assert page_data(maps)["music"]["key"] == "F# minor"
    assert maps.note_names[6] == "E#5" and "F5" not in maps.note_names
    assert key_name((1, "major")) == "Db major" and key_name((6, "major")) == "F# major"


def test_drums_have_no_key_and_are_named_by_general_midi(tmp_path, model):
    hits = [(36, 0, 24), (42, 0, 24), (38, 48, 72), (42, 48, 72), (36, 96, 120), (46, 144, 168)]
    kit = track([(0, mido.MetaMessage("track_name", name="Kit"))]
                + note_events([(p, s, e, 100) for p, s, e in hits], channel=9))
    path = save(midi_file(kit, ticks_per_beat=TPB), tmp_path / "drums.mid")
    maps = attention_maps(model, path, tokenizer=model.tokenizer.with_options(include_drums=True))
    assert maps.drum.all()
    assert maps.note_names[:3] == ["Bass Drum 1", "Closed Hi Hat", "Acoustic Snare"]
    page = page_data(maps)
    assert page["music"]["key"] is None and page["music"]["drumNames"][38] == drum_name(38) == "Acoustic Snare"
    assert json.loads(maps.to_json())["notes"][0]["drum"] is True
    # pitched notes beside the drums: the key comes from the pitched notes alone
    names = spelled_names([62, 66, 69, 38, 38, 38], [1, 1, 1, 1, 1, 1], [False] * 3 + [True] * 3)
    assert names == ["D4", "F#4", "A4"] + ["Acoustic Snare"] * 3


# --------------------------------------------------------------------------- 2. continuing a file from Python


def test_generate_given_a_file_points_to_continue_midi(tmp_path, model):
    path = save(midi_file(named("Melody", [(60, 0, TPB, 80)], 0)), tmp_path / "tune.mid")
    for source in (str(path), path, mido.MidiFile(path)):
        with pytest.raises(TypeError, match=r"continue_midi\(path, model=model"):
            generate(model, source)
    seq = model.tokenizer.encode(path)                                   # a TokenSequence is ids
    out = generate(model, seq, max_new_tokens=3, temperature=0)
    assert out.prompt_length == len(seq.ids) - 1 and len(out.ids) > out.prompt_length


# --------------------------------------------------------------------------- 3. chorales


def chorale(path, order=("Soprano", "Alto", "Tenor", "Bass")):
    """Four one-line parts (choir aahs), four bars of 4/4 chords in C major, tracks in ``order``."""
    chords = [(72, 67, 64, 48), (71, 67, 62, 55), (72, 64, 60, 57), (74, 65, 59, 55),
              (72, 67, 64, 48), (69, 65, 60, 53), (71, 67, 62, 55), (72, 64, 55, 48)] * 2
    voice = {"Soprano": 0, "Alto": 1, "Tenor": 2, "Bass": 3}
    tracks = [track([(0, tempo(80)), (0, time_signature(4, 4))])]
    for name in order:
        v = voice[name]
        notes = [(c[v], 2 * k * TPB, 2 * (k + 1) * TPB, 70) for k, c in enumerate(chords)]
        tracks.append(named(name, notes, v, 52))
    return save(midi_file(*tracks, ticks_per_beat=TPB), path)


def new_tracks(continued):
    return [[m.name for m in continued.midi.tracks[i] if m.type == "track_name"][0] for i in continued.added.tracks]


def test_a_chorale_continued_by_the_shipped_model_keeps_each_voice_on_its_own_track(tmp_path, model):
    continued = continue_midi(chorale(tmp_path / "chorale.mid"), model=model, bars=2, seed=3, no_end=True)
    names = new_tracks(continued)
    order = ["Soprano (continued)", "Alto (continued)", "Tenor (continued)", "Bass (continued)"]
    assert len(names) >= 3 and names == [n for n in order if n in names]          # score order
    new = continued.new_notes
    by_track = {int(t): new[new["track"] == t] for t in np.unique(new["track"])}
    means = [by_track[t]["pitch"].mean() for t in continued.added.tracks if t in by_track]
    assert means == sorted(means, reverse=True)                                  # soprano on top
    for onset in np.unique(new["start_tick"]):                                   # no voice holds a chord
        here = new[new["start_tick"] == onset]
        if len(here) <= len(names):
            assert len(np.unique(here["track"])) == len(here)


def test_voices_are_matched_top_down_to_the_nearest_last_pitches():
    assert C._nearest_voices(np.array([74.0, 67.0, 60.0, 43.0]), np.array([72.0, 67.0, 64.0, 48.0])) == [0, 1, 2, 3]
    assert C._nearest_voices(np.array([71.0, 55.0]), np.array([72.0, 67.0, 64.0, 48.0])) == [0, 3]
    assert C._nearest_voices(np.array([66.0]), np.array([72.0, 67.0, 64.0, 48.0])) == [1]


def test_the_grid_model_writes_its_voice_tracks_in_score_order(tmp_path):
    tok = GridTokenizer()
    path = chorale(tmp_path / "stored-tenor-first.mid", order=("Tenor", "Soprano", "Alto", "Bass"))
    step = [f"Pitch_{p}" for p in (74, 67, 59, 43)]                       # one new step: S A T B
    prompt = tok.encode(path).ids[:-1]
    ids = np.concatenate([prompt, tok.ids_from_tokens(step * 4)])
    mid, score = C.load_prompt(path)
    tracks = C.prompt_tracks(mid, score)
    target = C.choose_track(tracks, score, select.track_names(score))
    result = C.continue_prompt(mid, score, score, tracks, target, tok, ids, len(prompt))
    names = [[m.name for m in result.midi.tracks[i] if m.type == "track_name"][0] for i in result.tracks]
    assert names == ["Soprano (continued)", "Alto (continued)", "Tenor (continued)", "Bass (continued)"]
    assert [m.type for m in result.midi.tracks[result.tracks[0]]].count("marker") == 1


# --------------------------------------------------------------------------- 4. where a continuation starts


def pop_song(path):
    """A melody that stops after two bars while the piano plays on to the end of bar six."""
    melody = [(72 + (i % 3) * 2, i * TPB, (i + 1) * TPB, 90) for i in range(8)]
    piano = [(p, b * 4 * TPB, (b + 1) * 4 * TPB, 60) for b in range(6) for p in (48, 55, 64)]
    mid = midi_file(track([(0, tempo(100)), (0, time_signature(4, 4))]), named("Melody", melody, 0, 0),
                    named("Piano", piano, 1, 0), ticks_per_beat=TPB)
    return save(mid, path)


def test_a_melody_continuation_starts_after_the_whole_song_not_where_the_melody_stops(tmp_path, model):
    continued = continue_midi(pop_song(tmp_path / "pop.mid"), model=model, track="Melody", melody=True,
                              bars=2, seed=1, no_end=True)
    song_end = 6 * 4 * TPB
    assert len(continued.new_notes) and continued.new_notes["start_tick"].min() >= song_end
    assert continued.added.start_tick == song_end                         # the marker too


def test_new_notes_on_the_final_chord_move_a_whole_bar_later(tmp_path):
    tokenizer = RemiTokenizer(velocity_bins=0)
    # a cadence: one whole-bar chord in bar 2 (4/4)
    notes = [(60, 0, 4 * TPB, 80), (64, 0, 4 * TPB, 80), (67, 4 * TPB, 8 * TPB, 80), (72, 4 * TPB, 8 * TPB, 80)]
    path = save(midi_file(track([(0, time_signature(4, 4))]), named("Piano", notes, 0, 0), ticks_per_beat=TPB),
                tmp_path / "cadence.mid")
    # the model adds a note to the final chord (its onset) and one on beat 3 of that bar
    ids = tokenizer.encode(path).ids[:-1]
    more = tokenizer.ids_from_tokens(["Pitch_76", "Duration_12", "Position_24", "Pitch_74", "Duration_12"])
    new, anchor = C.new_notes(tokenizer, np.concatenate([ids, more]), len(ids))
    score = read_midi(path)
    start, end = C.after_prompt(*C.place_notes(new, anchor, tokenizer, score), 8 * TPB, score, tokenizer)
    assert sorted(start.tolist()) == [8 * TPB, 10 * TPB]                 # bar 3, beats 1 and 3
    # a continuation that already starts after the prompt is left where it is
    same = C.after_prompt(np.array([8 * TPB]), np.array([9 * TPB]), 8 * TPB, score, tokenizer)
    assert same[0].tolist() == [8 * TPB]


# --------------------------------------------------------------------------- 7. interop install


def _module_level_imports(path):
    """Top-level modules imported at module level and inside functions of one source file."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            (top if node in tree.body else inner).update(n.split(".")[0] for n in names)
    return top, inner


def test_torch_is_imported_only_by_the_torch_bridge_and_inside_the_functions_that_use_it():
    from pathlib import Path

    import music_attn

    root = Path(music_attn.__file__).parent
    at_top = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "torch" in _module_level_imports(p)[0])
    assert at_top == ["interop/torch_bridge.py", "interop/torch_model.py"]
    for name in ("interop/hf.py", "interop/miditok.py"):
        assert "torch" not in set().union(*_module_level_imports(root / name))
    # with torch impossible to import, the package, the command line and the Hugging Face path load
    code = ("import sys; sys.modules['torch'] = None\n"
            "import music_attn, music_attn.cli, music_attn.interop.hf, music_attn.bench.model, music_attn.cli.train\n"
            "print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=root.parent)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_attention_from_a_model_loaded_with_sdpa_says_to_load_it_eager(tmp_path, model):
    from music_attn.interop.hf import attention_maps_from

    path = save(midi_file(named("Melody", [(60 + i, i * TPB, (i + 1) * TPB, 80) for i in range(4)], 0)),
                tmp_path / "tune.mid")
    seq = model.tokenizer.encode(path)
    for attentions in ((None, None), None):                             # what SDPA hands back
        with pytest.raises(ValueError, match='attn_implementation="eager"'):
            attention_maps_from(attentions, seq)


def test_the_cpu_only_install_of_torch_is_documented():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/guide.md"):
        assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in \
            " ".join((root / doc).read_text(encoding="utf-8").split())


# --------------------------------------------------------------------------- 8. progress


def test_bench_tokenize_shows_its_progress_on_stderr_and_keeps_the_table_on_stdout(tmp_path, capsys):
    from music_attn.bench import tokenize as bench

    files = [save(midi_file(named("Melody", [(60 + (i * k) % 12, i * TPB, (i + 1) * TPB, 80) for i in range(16)], 0)),
                  tmp_path / f"tune{k}.mid") for k in range(4)]
    rates = bench.run(quick=True, files=files)
    out, err = capsys.readouterr()
    steps = 1 + 3 * len(rates)                                             # the note count, then 3 rounds
    lines = [line for line in err.splitlines() if line.startswith("bench tokenize: ")]
    assert lines and lines[0].startswith(f"bench tokenize: 1/{steps} ") and "counted 64 notes in 4 files" in lines[0]
    assert lines[-1].startswith(f"bench tokenize: {steps}/{steps} (100%)")
    assert out.startswith("bench tokenize: 4 files, 64 notes") and "bench tokenize: 1/" not in out


def test_progress_lines_wait_for_the_delay_and_come_at_most_every_few_seconds(monkeypatch):
    import io

    from music_attn import _progress

    clock = iter([0.0, 0.5, 1.0, 3.0, 4.0, 9.0, 9.5, 10.0])
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    log = io.StringIO()
    with _progress.progress(6, "job", delay=2.0, every=5.0, file=log) as bar:      # t0 = 0
        for what in "abcdef":
            bar.update(1, what)                                              # at 0.5, 1, 3, 4, 9, 9.5
    assert log.getvalue().splitlines() == ["job: 3/6 (50%) c, 3 s", "job: 5/6 (83%) e, 9 s", "job: 6/6 (100%) f, 10 s"]


def test_a_long_generation_reports_its_tokens_and_bars(model, monkeypatch, capsys):
    from music_attn import _progress

    real = _progress.progress
    monkeypatch.setattr(_progress, "progress", lambda *a, **k: real(*a, **{**k, "delay": 0.0, "every": 0.0}))
    generate(model, None, n_bars=2, temperature=0, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("generate: ") for line in lines) and "bar 2" in lines[-1]
