"""Head roles (music_attn.inspect.roles) on hand-built melodies whose shares are worked out by hand."""

import mido
import numpy as np
import pytest

from music_attn.inspect.roles import (
    RELATIONS, bar_and_position, bar_lines, dense_rows, head_roles, previous_in_voice, strongest,
    structure_baseline)
from music_attn.music.midi import read_midi

R = {name: k for k, name in enumerate(RELATIONS)}


def _roles(att, notes, structure=None, structure_uniform=None):
    att = np.asarray(att, dtype=np.float64)[None]                        # (1, H, N, N)
    L, H, N, _ = att.shape
    structure = np.zeros((L, H, N)) if structure is None else structure
    su = np.zeros(N) if structure_uniform is None else structure_uniform
    return head_roles(dense_rows(att), L, H, notes, structure, su)


def _melody(pitch, start, bar, position, track=None):
    n = len(pitch)
    return {"pitch": np.array(pitch), "start": np.array(start, float), "bar": np.array(bar),
            "position": np.array(position, float), "track": np.zeros(n, int) if track is None else np.array(track)}


# C D C D in one bar of 4/4: note i sees notes 0..i.
CDCD = _melody([60, 62, 60, 62], [0, .5, 1, 1.5], [0, 0, 0, 0], [0, 1, 2, 3])


def test_a_head_on_the_previous_note_gets_its_share_and_lift():
    prev = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    roles = _roles([prev], CDCD)
    # by hand: notes 1, 2, 3 give their whole attention to the previous note, note 0 has none
    assert roles["share"][0, 0, R["previous"]] == pytest.approx(3 / 4)
    # even attention: 1 of 2, 1 of 3, 1 of 4 visible notes is the previous one
    assert roles["uniform"][R["previous"]] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert roles["lift"][0, 0, R["previous"]] == pytest.approx(0.75 / (13 / 48))
    assert roles["share"][0, 0, R["pitch"]] == 0 and roles["share"][0, 0, R["onset"]] == 0


def test_a_head_on_the_same_pitch_counts_for_pitch_and_pitch_class():
    same = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    half = 0.5 * np.array([[2, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]])
    roles = _roles([same, half], CDCD)
    assert roles["share"][0, 0, R["pitch"]] == pytest.approx(2 / 4)       # notes 2 and 3 -> 0 and 1
    assert roles["share"][0, 1, R["pitch"]] == pytest.approx(1 / 4)       # half of that
    assert roles["share"][0, 0, R["pitch_class"]] == pytest.approx(2 / 4)
    assert roles["uniform"][R["pitch"]] == pytest.approx((1 / 3 + 1 / 4) / 4)
    assert roles["lift"][0, 0, R["pitch"]] == pytest.approx(0.5 / (7 / 48))
    # the same head also hits the previous note once (note 1 -> note 0 is not its pitch: no)
    assert roles["share"][0, 0, R["previous"]] == 0


def test_octaves_are_the_same_pitch_class_but_not_the_same_pitch():
    notes = _melody([60, 72, 48], [0, 1, 2], [0, 0, 0], [0, 1, 2])
    att = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    roles = _roles([att], notes)
    assert roles["share"][0, 0, R["pitch"]] == 0
    assert roles["share"][0, 0, R["pitch_class"]] == pytest.approx(2 / 3)


def test_one_bar_back_and_any_earlier_bar_in_a_three_four_tune():
    # bars of 3/4: E G | E A | E C ; notes 0..5, positions 0 and 1 in each bar
    notes = _melody([64, 67, 64, 69, 64, 60], [0, 1, 3, 4, 6, 7], [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1])
    att = np.zeros((6, 6))
    att[0, 0] = att[1, 1] = 1
    att[2, 0] = att[3, 1] = 1          # one bar back
    att[4, 0] = att[5, 3] = 1          # note 4: two bars back; note 5: one bar back
    roles = _roles([att], notes)
    assert roles["share"][0, 0, R["bar_back"]] == pytest.approx(3 / 6)
    assert roles["share"][0, 0, R["position"]] == pytest.approx(4 / 6)
    # visible notes 1..6; one-bar-back pairs exist for notes 2, 3, 4, 5; any-bar: 2, 3 have 1, 4, 5 have 2
    assert roles["uniform"][R["bar_back"]] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5 + 1 / 6) / 6)
    assert roles["uniform"][R["position"]] == pytest.approx((1 / 3 + 1 / 4 + 2 / 5 + 2 / 6) / 6)


def test_previous_note_follows_the_voice_and_onsets_group_chords():
    # melody (track 0) over a bass (track 1), notes in token order: onset, then pitch
    notes = _melody([48, 72, 50, 74], [0, 0, 1, 1], [0] * 4, [0, 0, 1, 1], track=[1, 0, 1, 0])
    assert previous_in_voice(notes["start"], notes["pitch"], notes["track"]).tolist() == [-1, -1, 0, 1]
    att = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0.5, 0.5, 0], [0.25, 0.25, 0.25, 0.25]])
    roles = _roles([att], notes)
    # previous in voice: note 2 -> 0 gets 0, note 3 -> 1 gets .25
    assert roles["share"][0, 0, R["previous"]] == pytest.approx(0.25 / 4)
    # same onset: note 1 -> 0 (1.0), note 3 -> 2 (.25)
    assert roles["share"][0, 0, R["onset"]] == pytest.approx(1.25 / 4)
    assert roles["uniform"][R["onset"]] == pytest.approx((1 / 2 + 1 / 4) / 4)


def test_previous_note_in_a_chordal_track_is_the_nearest_in_pitch():
    start, pitch = np.array([0, 0, 0, 1.0]), np.array([48, 60, 67, 65])
    assert previous_in_voice(start, pitch, np.zeros(4)).tolist() == [-1, -1, -1, 2]


def test_structure_share_and_its_baseline_from_the_tokens():
    labels = np.array([-1, 0, 0, -1, 1])
    # window 3: token 1 sees 0..1 (1 of 2 structure), token 2 sees 0..2 (1 of 3), token 4 sees 2..4 (1 of 3)
    assert structure_baseline(labels, 2, 3) == pytest.approx([(1 / 2 + 1 / 3) / 2, 1 / 3])
    notes = _melody([60, 62], [0, 1], [0, 0], [0, 1])
    structure = np.array([[[0.6, 0.2]]])
    roles = _roles([[[0.4, 0], [0.8, 0]]], notes, structure, structure_baseline(labels, 2, 3))
    assert roles["share"][0, 0, R["structure"]] == pytest.approx(0.4)
    assert roles["lift"][0, 0, R["structure"]] == pytest.approx(0.4 / ((5 / 12 + 1 / 3) / 2))


def test_the_table_names_each_heads_strongest_relation_sorted_by_lift():
    prev = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    same = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    table = strongest(_roles([prev, same], CDCD))
    assert [(r["head"], r["relation"]) for r in table] == [(2, "pitch"), (1, "previous")]
    assert table[0]["lift"] == pytest.approx(24 / 7) and table[1]["share"] == pytest.approx(0.75)


def _three_four_then_six_eight(path):
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    track.append(mido.Message("note_on", note=60, velocity=80, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=480))
    track.append(mido.MetaMessage("time_signature", numerator=6, denominator=8, time=2400))   # tick 2880
    track.append(mido.Message("note_on", note=62, velocity=80, time=240))                    # tick 3120
    track.append(mido.Message("note_off", note=62, velocity=0, time=2400))                   # tick 5520
    mid.save(path)


def test_bar_lines_follow_a_change_of_metre(tmp_path):
    _three_four_then_six_eight(tmp_path / "m.mid")
    score = read_midi(tmp_path / "m.mid")
    lines, num, den = bar_lines(score)
    # 3/4 bars of 1440 ticks at 0, 1440; 6/8 bars (also 1440 ticks) from 2880 until the end (5520)
    assert lines.tolist() == [0, 1440, 2880, 4320, 5760]
    assert num.tolist() == [3, 3, 6, 6] and den.tolist() == [4, 4, 8, 8]
    bar, pos = bar_and_position(score, score.notes["start"])
    assert bar.tolist() == [0, 2] and pos == pytest.approx([0, 0.5])


def test_previous_in_voice_matches_a_direct_search_on_random_chords():
    rng = np.random.default_rng(0)
    start, pitch, track = rng.integers(0, 30, 200) * 0.5, rng.integers(40, 80, 200), rng.integers(0, 3, 200)
    got = previous_in_voice(start, pitch, track)
    for i in range(200):
        earlier = [j for j in range(200) if track[j] == track[i] and start[j] < start[i]]
        if not earlier:
            assert got[i] == -1
            continue
        last = max(start[j] for j in earlier)
        best = min((j for j in earlier if start[j] == last), key=lambda j: (abs(pitch[j] - pitch[i]), pitch[j]))
        assert (start[got[i]], pitch[got[i]]) == (start[best], pitch[best])


def test_inspect_heads_prints_one_line_per_head_sorted_by_lift(tmp_path, capsys, monkeypatch):
    from importlib import resources

    from music_attn.cli import main
    from music_attn.runtime.checkpoint import load_model

    melody = sorted(resources.files("music_attn").joinpath("assets", "melodies").iterdir(), key=str)[0]
    if not str(melody).endswith(".mid"):
        pytest.skip("no shipped melody")
    cfg = load_model().config
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(melody), "--heads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("layer  head"))
    rows = [line.split() for line in lines[start + 1:]]
    assert len(rows) == cfg.n_layers * cfg.n_heads
    assert sorted((int(r[0]), int(r[1])) for r in rows) == [
        (l, h) for l in range(1, cfg.n_layers + 1) for h in range(1, cfg.n_heads + 1)]
    lifts = [float(r[-1].rstrip("x")) for r in rows]
    assert lifts == sorted(lifts, reverse=True)
    assert all(" ".join(r[2:-2]) in {"previous note", "same onset", "same pitch", "same pitch class", "one bar back",
                                     "same place in bar", "structure tokens"} for r in rows)


def test_heads_that_store_different_keys_share_one_visible_set():
    # head 0 stores every earlier note; head 1 dropped its zero weights (only the previous note)
    full = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], float)
    dense = dense_rows(full[None, None])(0, 0)
    qi = np.repeat(np.arange(4), np.diff(dense[0]))
    keep = dense[2] > 0
    sparse = (np.concatenate(([0], np.cumsum(np.bincount(qi[keep], minlength=4)))), dense[1][keep], dense[2][keep])
    rows = lambda layer, head: dense if head == 0 else sparse                      # noqa: E731
    roles = head_roles(rows, 1, 2, CDCD, np.zeros((1, 2, 4)), np.zeros(4))
    assert roles["share"][0, 0] == pytest.approx(roles["share"][0, 1])
    assert roles["uniform"][R["previous"]] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_melody_relations_point_lower_voices_at_the_melody_note_above_them():
    from music_attn.inspect.roles import melody_above, melody_track_notes, relation_masks
    # melody (track 0): C5 at 0 s, D5 at 1 s; bass (track 1): C3 at 0 s, B2 at 0.5 s, G2 at 1 s
    notes = {"pitch": np.array([72, 48, 47, 74, 43]), "start": np.array([0.0, 0.0, 0.5, 1.0, 1.0]),
             "track": np.array([0, 1, 1, 0, 1]), "bar": np.zeros(5, int), "position": np.zeros(5)}
    notes["melody"] = melody_track_notes(notes["pitch"], notes["track"])
    assert notes["melody"].tolist() == [True, False, False, True, False]
    assert melody_above(notes["start"], notes["melody"]).tolist() == [0, 0, 0, 3, 3]
    qi, kj = np.tril_indices(5)
    masks = relation_masks(qi, kj, notes, np.full(5, -1))
    now = {(int(i), int(j)) for i, j in zip(qi[masks["melody_now"]], kj[masks["melody_now"]])}
    assert now == {(1, 0), (2, 0), (4, 3)}
    to_melody = {(int(i), int(j)) for i, j in zip(qi[masks["melody"]], kj[masks["melody"]])}
    assert to_melody == {(1, 0), (2, 0), (4, 0), (4, 3)}
    assert not melody_track_notes(notes["pitch"], np.zeros(5, int)).any()      # one track: no melody
