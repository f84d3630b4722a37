"""Tests of music_attn.inspect.viz: the self-contained page, its embedded data, PNG and JSON output."""

import base64
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from music_attn.errors import MusicAttnError
from music_attn.inspect.inspector import AttentionMaps
from music_attn.inspect.viz import encode_sparse, note_image, page_data, render_html, render_png, write_html, write_json
from music_attn.music.theory import note_name as spell


def synthetic_maps(n_notes, L=2, H=3, seed=0, name="tune.mid", texts=None):
    """REMI-like tokens (Bar every 4 notes; Position, Pitch, Velocity, Duration per note) with
    random causal attention: diffuse rows, the worst case for the page's sparse storage."""
    rng = np.random.default_rng(seed)
    labels = [-1]
    for i in range(n_notes):
        labels += ([-1] if i % 4 == 0 else []) + [-1, i, i, i]
    labels.append(-1)
    T = len(labels)
    logits = rng.normal(size=(L, H, T, T)).astype(np.float32) * 2
    logits[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    pitch = 60 + np.cumsum(rng.integers(-3, 4, n_notes)).clip(-12, 12)
    start = np.arange(n_notes) * 0.5
    notes = {"pitch": pitch, "start": start, "end": start + 0.45}
    return AttentionMaps.from_arrays(att, labels, notes, tokens=[f"Tok_{t}" for t in range(T)],
                                     token_nll=rng.exponential(1.0, T), name=name, texts=texts, window=256)


def page_json(page):
    """The JSON the page embeds, parsed the way the browser's JSON.parse would."""
    body = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    return json.loads(body)


def decode_rows(sparse):
    """Python decoder of the page's sparse format -> list of [(column, weight), ...] per row."""
    counts = np.frombuffer(base64.b64decode(sparse["counts"]), np.uint8)
    index = np.frombuffer(base64.b64decode(sparse["index"]), "<u%d" % sparse["indexBytes"])
    value = np.frombuffer(base64.b64decode(sparse["value"]), np.uint8)
    offs = np.r_[0, np.cumsum(counts)]
    return [list(zip(index[a:b].tolist(), (value[a:b] / 255).tolist())) for a, b in zip(offs[:-1], offs[1:])]


@pytest.fixture(scope="module")
def big_maps():
    return synthetic_maps(300, L=4, H=4)


@pytest.mark.slow
def test_page_for_300_notes_is_self_contained_and_under_2_mb(big_maps, tmp_path):
    size = write_html(big_maps, tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert size == len(page.encode("utf-8")) < 2_000_000
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "@import" not in page and "url(" not in page and "<link" not in page
    assert len(re.findall(r"<script\b", page)) == 2                # data + inline code, no src=
    assert "default-src 'none'" in page                           # no request can leave the page


def test_midi_text_cannot_break_out_of_the_data_element():
    evil = '</script><script>alert(1)</script><!--'
    maps = synthetic_maps(3, name=evil + ".mid", texts={"tracks": [evil], "lyrics": "a & b <i>c</i>"})
    page = render_html(maps)
    assert "alert(1)</script>" not in page and "<i>" not in page
    assert page.count("</script>") == 2
    data = page_json(page)
    assert data["title"] == evil + ".mid" and data["tracks"] == ["0 · " + evil]
    assert data["lyrics"] == "a & b <i>c</i>"


@pytest.mark.slow
def test_page_maps_decode_to_each_rows_strongest_weights(big_maps):
    data = page_json(render_html(big_maps))
    L, H, N = big_maps.n_layers, big_maps.n_heads, big_maps.n_notes
    rows = decode_rows(data["noteMaps"])
    assert data["noteMaps"]["heads"] == H + 1 and len(rows) == L * (H + 1) * N
    for layer, head, i in [(0, 0, 0), (1, 2, 150), (3, 3, 299), (2, H, 77)]:
        want = (big_maps.note_attention[layer].mean(0) if head == H else big_maps.note_attention[layer, head])[i]
        got = rows[(layer * (H + 1) + head) * N + i]
        assert got, "every row keeps at least its largest entry"
        weights = [w for _, w in got]
        assert weights == sorted(weights, reverse=True)
        assert got[0][0] == int(np.argmax(want)) or want[got[0][0]] == pytest.approx(want.max(), abs=1 / 255)
        for j, w in got:
            assert w == pytest.approx(want[j], abs=0.5 / 255 + 1e-9)
        assert min(weights) >= np.sort(want)[::-1][len(got) - 1] - 1 / 255
    structure = np.frombuffer(base64.b64decode(data["structure"]), np.uint8).reshape(L, H + 1, N) / 255
    np.testing.assert_allclose(structure[:, :H], big_maps.structure_share, atol=0.5 / 255 + 1e-9)


def test_sparse_rows_keep_the_largest_entries_first_and_drop_zeros():
    stack = np.array([[[[0.12, 0.6, 0.28, 0.0], [0.0, 0.0, 0.001, 0.999]]]])    # (1, 1, 2, 4)
    rows = decode_rows(encode_sparse(stack, 3))
    assert [j for j, _ in rows[0]] == [1, 2, 0]
    assert [round(w * 255) for _, w in rows[0]] == [153, 71, 31]                # round(w * 255)
    assert rows[1] == [(3, 255 / 255)]                                          # 0.001 -> 0, dropped


def test_notes_and_tokens_are_embedded_for_the_piano_roll_and_tooltips():
    maps = synthetic_maps(6)
    data = page_json(render_html(maps))
    assert data["notes"]["pitch"] == maps.pitch.tolist()
    assert data["notes"]["end"][2] == 1450                                  # milliseconds
    assert data["tokens"]["note"] == maps.note_of_token.tolist() and data["tokens"]["text"][1] == "Tok_1"
    assert (data["layers"], data["heads"], data["window"]) == (2, 3, 256)


@pytest.mark.slow
def test_png_is_a_grid_image(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    render_png(synthetic_maps(10, L=2, H=3), tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(tmp_path / "grid.png").shape[:2]
    assert width > height                                           # 3 heads across, 2 layers down
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]      # no temporary file left


def test_note_image_is_the_note_map_itself_or_its_binned_mean():
    maps = synthetic_maps(12, L=1, H=2)
    dense = maps.note_attention                                      # (1, 2, 12, 12)
    assert np.allclose(note_image(maps, 0, 1, 12), dense[0, 1])
    binned = dense[0, 1].reshape(4, 3, 4, 3).sum(axis=3).mean(axis=1)  # runs of 3 notes
    assert np.allclose(note_image(maps, 0, 1, 4), binned)


def test_png_of_a_long_piece_is_drawn_binned(tmp_path):
    pytest.importorskip("matplotlib")
    render_png(synthetic_maps(30, L=1, H=1), tmp_path / "grid.png", max_cells=8)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MusicAttnError, match=r"pip install 'music_attn\[plot\]'"):
        render_png(synthetic_maps(3), tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists()


def test_json_file_holds_the_note_maps(tmp_path):
    maps = synthetic_maps(5)
    write_json(maps, tmp_path / "maps.json", top_k=5)            # k = N: every key note is listed
    data = json.loads((tmp_path / "maps.json").read_text(encoding="utf-8"))
    for layer, head in np.ndindex(maps.n_layers, maps.n_heads):
        entry = data["note_attention"]["layers"][layer][head]
        dense = np.zeros((5, 5))
        for i, (keys, weights) in enumerate(zip(entry["keys"], entry["weights"])):
            dense[i, keys] = weights
        np.testing.assert_allclose(dense, maps.note_attention[layer, head], atol=5e-4)
        assert max(entry["rest"]) == 0
    assert len(data["tokens"]["text"]) == maps.n_tokens and data["notes"][0]["pitch"] == maps.pitch[0]


# ------------------------------------------------------------ the music's grid
def _score(tmp_path, notes, *, metre=(4, 4), tempo=500_000):
    """A one-track MIDI file of (pitch, start tick, length) notes at 480 ticks per quarter, read back."""
    import mido
    from music_attn.music.midi import read_midi

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("time_signature", numerator=metre[0], denominator=metre[1], time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    events = sorted([(t, 1, p) for p, t, _ in notes] + [(t + n, 0, p) for p, t, n in notes])
    now = 0
    for tick, on, pitch in events:
        track.append(mido.Message("note_on" if on else "note_off", note=pitch, velocity=80 * on, time=tick - now))
        now = tick
    mid.save(tmp_path / "tune.mid")
    return read_midi(tmp_path / "tune.mid")


def _maps_for(score):
    """Random attention over the notes of ``score``."""
    base = synthetic_maps(len(score.notes))
    notes = {"pitch": score.notes["pitch"], "start": score.notes["start"], "end": score.notes["end"]}
    return AttentionMaps.from_arrays(base.token_attention, base.note_of_token, notes, name="tune.mid", window=256)


def test_bar_lines_beats_and_metre_come_from_the_file(tmp_path):
    # tempo 400,000 us per quarter: a 6/8 bar (3 quarters) lasts 1.2 s; the last note opens bar 3
    score = _score(tmp_path, [(67, 0, 720), (69, 720, 720), (71, 1440, 1440), (72, 2880, 480)], metre=(6, 8),
                   tempo=400_000)
    data = page_data(_maps_for(score), score=score)
    assert data["music"]["bars"] == [0, 1200, 2400, 3600]
    assert data["music"]["meters"] == [[0, "6/8"]]
    assert data["music"]["beats"] == [0, 600, 1200, 1800, 2400, 3000]      # dotted quarters in 6/8
    assert data["notes"]["bar"] == [0, 0, 1, 2] and data["notes"]["beatInBar"] == [1, 2, 1, 1]


def test_note_names_follow_the_key(tmp_path):
    f_major = [(p, 480 * k, 480) for k, p in enumerate([65, 67, 69, 70, 72, 70, 69, 67, 65, 60, 65])]
    d_major = [(p, 480 * k, 480) for k, p in enumerate([62, 64, 66, 67, 69, 71, 73, 74, 69, 66, 62])]
    for notes, key, black in [(f_major, "F major", "Bb4"), (d_major, "D major", "F#4")]:
        score = _score(tmp_path, notes)
        data = page_data(_maps_for(score), score=score)
        assert data["music"]["key"] == key and black in data["notes"]["name"]


def test_spelling_of_pitches():
    assert [spell(p) for p in (60, 61, 70, 21)] == ["C4", "C#4", "A#4", "A0"]
    assert [spell(p, flats=True) for p in (60, 61, 70, 108)] == ["C4", "Db4", "Bb4", "C8"]


class _WithMarker:
    """A Score plus a marker text event, as a file written by ``generate`` carries."""

    def __init__(self, score, tick, text):
        self._score, self.texts = score, ((tick, 0, "marker", text),)

    def __getattr__(self, name):
        return getattr(self._score, name)


def test_a_continuation_marker_is_placed_at_its_time(tmp_path):
    score = _score(tmp_path, [(60 + k, 480 * k, 480) for k in range(8)], tempo=600_000)
    data = page_data(_maps_for(score), score=_WithMarker(score, 1920, "music-attn: continuation"))
    assert data["music"]["marker"] == 2400                                 # 4 quarters at 0.6 s
    assert page_data(_maps_for(score), score=_WithMarker(score, 1920, "verse"))["music"]["marker"] is None
    assert page_data(_maps_for(score), score=score)["music"]["marker"] is None


def test_head_pattern_puts_a_previous_note_head_one_beat_back():
    from music_attn.inspect.roles import dense_rows
    from music_attn.inspect.viz import _patterns

    att = np.zeros((1, 2, 12, 12))
    att[0, 0, np.arange(1, 12), np.arange(11)] = 1.0                       # the note one beat back
    att[0, 0, 0, 0] = 1.0
    att[0, 1] = np.tril(np.ones((12, 12))) / np.arange(1, 13)[:, None]     # even over the past
    data = _patterns(dense_rows(att), 1, 2, np.arange(12.0))               # notes one beat apart
    pattern = np.frombuffer(base64.b64decode(data["value"]), np.uint8).reshape(1, 3, -1)
    # head 0: bin 2 (1 beat back) holds 11 of 12 notes' weight, bin 0 (same onset) one
    assert pattern[0, 0, 2] == 255 and pattern[0, 0, 0] == round(255 / 11) and pattern[0, 0, 1] == 0
    assert pattern[0, 1, 0] == 255 and pattern[0, 1, 2] > 0 and pattern[0, 1, 1] == 0


def test_roles_table_lists_every_head_once_sorted_by_lift(big_maps):
    table = page_json(render_html(big_maps))["roles"]["table"]
    assert sorted((r["layer"], r["head"]) for r in table) == [(l, h) for l in range(1, 5) for h in range(1, 5)]
    lifts = [r["lift"] for r in table]
    assert lifts == sorted(lifts, reverse=True)


def test_mean_of_heads_adds_rows_that_store_different_keys():
    from music_attn.inspect.viz import _mean_rows

    a = (np.array([0, 1, 3]), np.array([0, 0, 1]), np.array([1.0, 0.4, 0.6]))       # 2 notes, every key
    b = (np.array([0, 1, 2]), np.array([0, 1]), np.array([1.0, 1.0]))                # zero weights dropped
    indptr, keys, weights = _mean_rows([a, b], 2)
    assert indptr.tolist() == [0, 1, 3] and keys.tolist() == [0, 0, 1]
    assert weights == pytest.approx([1.0, 0.2, 0.8])


def test_without_a_score_bar_lines_come_from_the_notes_on_downbeats():
    maps = synthetic_maps(12)                       # notes every 0.5 s
    maps.bar = 3 + np.arange(12) // 4               # a passage from bar 3, four notes a bar
    maps.beat = 1.0 + np.arange(12) % 4
    maps.beat[4] = 1.5                              # bar 4 has no note on its downbeat: interpolated
    music = page_data(maps)["music"]
    assert music["bars"] == [0, 2000, 4000, 6000] and music["firstBar"] == 3


@pytest.mark.slow
def test_png_is_the_same_after_matplotlib_was_preloaded_in_a_thread(tmp_path):
    """The CLI loads matplotlib (and draws a little) in a thread while the model runs:
    the PNG drawn afterwards is byte for byte the one drawn without it."""
    pytest.importorskip("matplotlib")
    import subprocess
    import sys
    child = ("import sys, threading\n"
             "sys.path.insert(0, sys.argv[3])\n"
             "from test_viz import synthetic_maps\n"
             "from music_attn.inspect.viz import preload_matplotlib, render_png\n"
             "if sys.argv[2] == 'preload':\n"
             "    t = threading.Thread(target=preload_matplotlib); t.start(); t.join()\n"
             "render_png(synthetic_maps(10, L=2, H=3), sys.argv[1])\n")
    here = str(Path(__file__).parent)
    for mode in ("plain", "preload"):
        subprocess.run([sys.executable, "-c", child, str(tmp_path / f"{mode}.png"), mode, here],
                       check=True, timeout=120)
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "preload.png").read_bytes()
