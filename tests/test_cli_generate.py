"""`generate --prompt`: the prompt comes back exactly, the continuation follows it.

The prompt is written with mido (tests/prompt_factory.py: four tracks with names,
programs and controllers, 5 tempo changes, a change of metre, drums); the
output is read back with mido and pretty_midi, never with the writer's code.
"""

import subprocess
import sys

import mido
import numpy as np
import pretty_midi
import pytest

from midi_factory import bars_by_loop, midi_file, note_events, save, track
import prompt_factory as mf
from music_attn.cli import main
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer
from music_attn.runtime.checkpoint import save_checkpoint

MARKER = "music-attn: continuation"
END_TICK = mf.beat_ticks(mf.PROMPT_END_BEAT)
LAST_ONSET_TICK = max(mf.beat_ticks(n[1]) for t in mf.PROMPT_TRACKS if t[1] != 9 for n in t[3])


def seconds_at(beat):
    """Seconds at ``beat`` under PROMPT_BPMS, the last tempo going on for ever (float64 loop)."""
    total, marks = 0.0, list(mf.PROMPT_BPMS) + [(np.inf, None)]
    for (b0, bpm), (b1, _) in zip(marks[:-1], marks[1:]):
        total += (min(beat, b1) - b0) * 60.0 / bpm if beat > b0 else 0.0
    return total


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
    return save(mf.multitrack_prompt(), tmp_path_factory.mktemp("prompt") / "quartet.mid")


def run(*args):
    """`python -m music_attn generate ...` in a fresh process: (returncode, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "music_attn", "generate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def run_here(capsys, *args):
    code = main(["generate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def continuation_track(mid):
    return mid.tracks[-1]


def absolute(track):
    """(tick, message) pairs of a mido track."""
    tick, out = 0, []
    for msg in track:
        tick += msg.time
        out.append((tick, msg))
    return out


def new_note_ticks(mid):
    """(pitch, start, end, velocity) in ticks of the continuation track, paired per pitch FIFO."""
    sounding, notes = {}, []
    for tick, msg in absolute(continuation_track(mid)):
        if msg.type == "note_on" and msg.velocity:
            sounding.setdefault(msg.note, []).append((tick, msg.velocity))
        elif msg.type in ("note_on", "note_off"):
            start, velocity = sounding[msg.note].pop(0)
            notes.append((msg.note, start, tick, velocity))
    return sorted(notes, key=lambda n: (n[1], n[0]))


# --------------------------------------------------------------------------- the prompt, exactly


@pytest.fixture(scope="module")
def continued(prompt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "continued.mid"
    before = prompt.read_bytes()
    code, stdout, stderr = run("--prompt", prompt, "-o", out, "--bars", 2, "--no-end", "--seed", 3)
    assert code == 0, stderr
    assert prompt.read_bytes() == before
    return out, stdout, stderr


def test_every_prompt_track_and_message_comes_back_unchanged(prompt, continued):
    original, result = mido.MidiFile(prompt), mido.MidiFile(continued[0])
    assert result.ticks_per_beat == mf.PROMPT_TPB and result.type == 1
    assert len(result.tracks) == len(original.tracks) + 1
    for before, after in zip(original.tracks, result.tracks):
        assert [m.dict() for m in after] == [m.dict() for m in before]


def test_every_prompt_note_keeps_pitch_velocity_program_and_times(prompt, continued):
    original, result = pretty_midi.PrettyMIDI(str(prompt)), pretty_midi.PrettyMIDI(str(continued[0]))
    kept = [inst for inst in result.instruments if not inst.name.endswith("(continued)")]
    assert [(i.name, i.program, i.is_drum) for i in kept] == \
        [(i.name, i.program, i.is_drum) for i in original.instruments]
    for before, after in zip(original.instruments, kept):
        assert len(after.notes) == len(before.notes)
        for a, b in zip(after.notes, before.notes):
            assert (a.pitch, a.velocity) == (b.pitch, b.velocity)
            assert abs(a.start - b.start) < 1e-3 and abs(a.end - b.end) < 1e-3


def test_tempo_map_and_metres_are_the_prompts(continued):
    result = pretty_midi.PrettyMIDI(str(continued[0]))
    times, bpms = result.get_tempo_changes()
    assert len(times) == 6
    np.testing.assert_allclose(bpms, [bpm for _, bpm in mf.PROMPT_BPMS], rtol=1e-5)
    np.testing.assert_allclose(times, [seconds_at(b) for b, _ in mf.PROMPT_BPMS], atol=1e-3)
    assert [(ts.numerator, ts.denominator) for ts in result.time_signature_changes] == [(4, 4), (3, 4)]


def test_continuation_is_on_its_own_track_with_the_violins_program_and_name(continued):
    mid = mido.MidiFile(continued[0])
    track = continuation_track(mid)
    names = [m.name for m in track if m.type == "track_name"]
    programs = {(m.channel, m.program) for m in track if m.type == "program_change"}
    channels = {m.channel for m in track if m.type in ("note_on", "note_off")}
    assert names == ["Violin I (continued)"] and programs == {(0, 40)} and channels == {0}
    notes = new_note_ticks(mid)
    assert len(notes) > 0
    # a model without Velocity tokens plays the continued track's median velocity
    assert {v for *_, v in notes} == {int(np.median([n[3] for n in mf.PROMPT_TRACKS[0][3]]))}


def test_continuation_follows_the_prompt_at_its_last_tempo_and_in_its_metre(continued):
    mid = mido.MidiFile(continued[0])
    notes = new_note_ticks(mid)
    starts = np.array([n[1] for n in notes])
    assert starts.min() >= LAST_ONSET_TICK
    step = mf.PROMPT_TPB // 12                                  # the shipped REMI grid
    assert all(start % step == 0 and end % step == 0 for _, start, end, _ in notes)
    # 2 bars of 3/4 after the prompt's last bar line, no further
    assert starts.max() < END_TICK + 2 * 3 * mf.PROMPT_TPB
    # seconds follow the prompt's tempo map, its last tempo going on
    result = pretty_midi.PrettyMIDI(str(continued[0])).instruments[-1]
    got = sorted((n.start, n.pitch) for n in result.notes)
    want = sorted((seconds_at(s / mf.PROMPT_TPB), p) for p, s, _, _ in notes)
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], atol=1e-3)


def test_a_marker_stands_where_the_continuation_takes_over(continued):
    mid = mido.MidiFile(continued[0])
    markers = [(tick, m.text) for track in mid.tracks for tick, m in absolute(track) if m.type == "marker"]
    first = min(n[1] for n in new_note_ticks(mid))
    assert markers == [(min(first, END_TICK), MARKER)]


def test_summary_says_what_was_kept_and_what_the_model_left_out(continued):
    stdout = continued[1]
    assert "5 tempo changes" in stdout and "'Violin I (continued)'" in stdout and "at 84 bpm in 3/4" in stdout
    assert "(2 bars)" in stdout
    assert continued[2].endswith(": 8 drum notes left out (--drums keeps them); the output keeps them\n")


# --------------------------------------------------------------------------- choices


def last_track_header(path):
    track = continuation_track(mido.MidiFile(path))
    name = [m.name for m in track if m.type == "track_name"][0]
    program = [(m.channel, m.program) for m in track if m.type == "program_change"]
    return name, program


def test_track_by_index_and_by_name(prompt, tmp_path, capsys):
    out = tmp_path / "c.mid"
    assert run_here(capsys, "--prompt", prompt, "-o", out, "--bars", 1, "--track", 2)[0] == 0
    assert last_track_header(out) == ("Cello (continued)", [(1, 42)])
    assert run_here(capsys, "--prompt", prompt, "-o", out, "--bars", 1, "--track", "viola")[0] == 0
    assert last_track_header(out) == ("Viola (continued)", [(2, 41)])


def test_unknown_track_is_one_line_error_listing_the_tracks(prompt, tmp_path, capsys):
    code, _, err = run_here(capsys, "--prompt", prompt, "-o", tmp_path / "x.mid", "--track", "Oboe")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "'Violin I'" in err and "'Cello'" in err and not (tmp_path / "x.mid").exists()


def test_melody_mode_reads_only_the_chosen_track(prompt, tmp_path, capsys):
    code, out, _ = run_here(capsys, "--prompt", prompt, "-o", tmp_path / "m.mid", "--bars", 1,
                            "--track", "Cello", "--melody")
    assert code == 0 and "the model read 6 notes (the top voice of track 2)" in out
    assert "drum" not in out


def test_drums_flag_lets_the_model_read_the_drum_notes(prompt, tmp_path, capsys):
    n_notes = sum(len(t[3]) for t in mf.PROMPT_TRACKS)
    code, out, err = run_here(capsys, "--prompt", prompt, "-o", tmp_path / "d.mid", "--bars", 1, "--drums")
    assert code == 0 and f"the model read {n_notes} notes" in out and "drum notes left out" not in err
    code, out, err = run_here(capsys, "--prompt", prompt, "-o", tmp_path / "d.mid", "--bars", 1)
    assert code == 0 and "drum notes left out" in err


def test_type_0_prompt_keeps_its_track_and_gains_one(prompt, tmp_path, capsys):
    merged = mido.MidiFile(type=0, ticks_per_beat=mf.PROMPT_TPB)
    merged.tracks.append(mido.merge_tracks(mido.MidiFile(prompt).tracks))
    path = save(merged, tmp_path / "type0.mid")
    assert run_here(capsys, "--prompt", path, "-o", tmp_path / "o.mid", "--bars", 1)[0] == 0
    result = mido.MidiFile(tmp_path / "o.mid")
    assert result.type == 1 and len(result.tracks) == 2
    assert [m.dict() for m in result.tracks[0]] == [m.dict() for m in merged.tracks[0]]


# --------------------------------------------------------------------------- bars and the end


def test_bars_with_no_end_gives_that_many_bars(prompt, tmp_path, capsys):
    code, out, _ = run_here(capsys, "--prompt", prompt, "-o", tmp_path / "b.mid", "--bars", 3, "--no-end",
                            "--seed", 5)
    assert code == 0 and "(3 bars) after a" in out and "stopped at bars" in out and "ended the piece" not in out
    starts = [n[1] for n in new_note_ticks(mido.MidiFile(tmp_path / "b.mid"))]
    bar = 3 * mf.PROMPT_TPB
    # after the whole prompt (it ends at a bar line); notes the model put on the prompt's final
    # chord move the continuation a bar later, so its third bar may end one bar on
    assert END_TICK <= min(starts) and END_TICK + 2 * bar <= max(starts) < END_TICK + 4 * bar


def eager_model(path, tokenizer, **bias):
    """A small random model whose head favours some tokens (by name) by the given logits."""
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                         max_len=192)
    model = init_model(config, np.random.default_rng(0), tokenizer=tokenizer)
    for name, logit in bias.items():
        model.params["head.b"][tokenizer.token_to_id(name)] = logit
    save_checkpoint(path, model)
    return path


def test_early_end_is_reported_with_the_bars_written_and_no_end_prevents_it(prompt, tmp_path, capsys):
    model = eager_model(tmp_path / "eager.npz", RemiTokenizer(velocity_bins=0), EOS=40.0, Bar=4.0)
    out = tmp_path / "e.mid"
    code, stdout, _ = run_here(capsys, "-m", model, "--prompt", prompt, "-o", out, "--bars", 3, "--may-end")
    # the prompt ends at a bar line: the continuation starts with it (one bar), then the model ends
    assert code == 0 and "the model ended the piece after 1 of the 3 bars asked for" in stdout
    assert "--no-end" in stdout and new_note_ticks(mido.MidiFile(out)) == []
    code, stdout, _ = run_here(capsys, "-m", model, "--prompt", prompt, "-o", out, "--bars", 3, "--no-end")
    assert code == 0 and "(3 bars)" in stdout and "ended the piece" not in stdout
    code, stdout, _ = run_here(capsys, "-m", model, "--prompt", prompt, "-o", out, "--bars", 3)
    assert code == 0 and "(3 bars)" in stdout and "ended the piece" not in stdout    # the default


def test_performance_tokens_continue_in_seconds_after_the_prompts_last_note_off(prompt, tmp_path, capsys):
    tokenizer = PerformanceTokenizer()
    model = eager_model(tmp_path / "perf.npz", tokenizer, **{"NoteOn_67": 3.0, "TimeShift_25": 3.0})
    out = tmp_path / "p.mid"
    assert run_here(capsys, "-m", model, "--prompt", prompt, "-o", out, "--tokens", 40, "--seed", 1)[0] == 0
    notes = pretty_midi.PrettyMIDI(str(out)).instruments[-1].notes
    prompt_end = seconds_at(mf.PROMPT_END_BEAT)
    assert len(notes) > 0
    for note in notes:   # whole 10 ms steps after the prompt's end, under the last tempo
        for t in (note.start, note.end):
            steps = (t - prompt_end) / 0.01
            assert steps > -1e-6 and abs(steps - round(steps)) < 0.1


def test_prompt_of_drums_only_is_refused_unless_the_model_may_read_drums(tmp_path, capsys):
    kit = track(note_events([(36, i * 96, i * 96 + 24, 100) for i in range(8)], channel=9))
    path = save(midi_file(kit, ticks_per_beat=192), tmp_path / "kit.mid")
    code, _, err = run_here(capsys, "--prompt", path, "-o", tmp_path / "k.mid", "--bars", 1)
    assert code == 2 and "--drums reads them" in err and not (tmp_path / "k.mid").exists()
    code, out, _ = run_here(capsys, "--prompt", path, "-o", tmp_path / "k.mid", "--bars", 1, "--drums")
    assert code == 0 and "the model read 8 notes" in out
    assert [m.dict() for m in mido.MidiFile(tmp_path / "k.mid").tracks[0]] == [m.dict() for m in kit]


def test_output_that_is_the_prompt_is_refused_and_the_prompt_kept(prompt, tmp_path, capsys):
    copy = tmp_path / "mine.mid"
    copy.write_bytes(prompt.read_bytes())
    link = tmp_path / "link.mid"
    link.symlink_to(copy)
    for out in (copy, link):
        code, _, err = run_here(capsys, "--prompt", copy, "-o", out, "--bars", 1)
        assert code == 2 and err.startswith("error: ") and "is the input file" in err
    assert copy.read_bytes() == prompt.read_bytes()


# --------------------------------------------------------------------------- several samples

def test_sample_i_of_a_batch_is_the_single_run_with_seed_plus_i(capsys, prompt, tmp_path):
    template = str(tmp_path / "take_{i}.mid")
    code = run_here(capsys, "--prompt", prompt, "--bars", 1, "--seed", 7, "--num-samples", 3, "-o", template)[0]
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["take_0.mid", "take_1.mid", "take_2.mid"]
    for i in (0, 2):
        single = tmp_path / f"single_{i}.mid"
        assert run_here(capsys, "--prompt", prompt, "--bars", 1, "--seed", 7 + i, "-o", single)[0] == 0
        assert single.read_bytes() == (tmp_path / f"take_{i}.mid").read_bytes()


def test_several_samples_need_a_numbered_output_name(capsys, tmp_path):
    code, _, err = run_here(capsys, "--bars", 1, "--num-samples", 2, "-o", tmp_path / "x.mid")
    assert code == 2 and "-o needs one '{i}'" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["1.5", "-0.1", "often", "nan"])
def test_repeat_outside_zero_to_one_is_refused_in_one_line_and_writes_nothing(capsys, tmp_path, value):
    out = tmp_path / "out.mid"
    code, _, err = run_here(capsys, "--bars", "2", "--repeat", value, "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--repeat" in err and not out.exists()


def test_repeat_from_nothing_replays_bars(capsys, tmp_path):
    from music_attn.music import rhythm
    from music_attn.music.midi import read_midi
    out = tmp_path / "out.mid"
    code, _, _ = run_here(capsys, "--bars", "8", "--repeat", "1", "--seed", "1", "-o", out)
    score = read_midi(out)
    lines = rhythm.bar_starts(score, end_tick=int(score.notes["end_tick"].max()) + 1)
    bars = bars_by_loop(score.notes, lines)
    full = [k for k, b in enumerate(bars) if b]
    assert code == 0 and sum(bars[k] in bars[:k] for k in full[1:]) >= len(full) // 2
