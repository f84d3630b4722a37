"""Tests of music_attn.inspect.viz: the self-contained page, its embedded data, PNG and JSON output."""

import base64
import json
import re
import sys

import numpy as np
import pytest

from music_attn.errors import MusicAttnError
from music_attn.inspect.inspector import AttentionMaps
from music_attn.inspect.viz import encode_sparse, render_html, render_png, write_html, write_json


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
    assert data["title"] == evil + ".mid" and data["tracks"] == [evil]
    assert data["lyrics"] == "a & b <i>c</i>"


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
    assert data["notes"]["name"] == maps.note_names and data["notes"]["pitch"] == maps.pitch.tolist()
    assert data["notes"]["end"][2] == pytest.approx(1.45)
    assert data["tokens"]["note"] == maps.note_of_token.tolist() and data["tokens"]["text"][1] == "Tok_1"
    assert (data["layers"], data["heads"], data["window"]) == (2, 3, 256)


def test_png_is_a_grid_image(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    render_png(synthetic_maps(10, L=2, H=3), tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(tmp_path / "grid.png").shape[:2]
    assert width > height                                           # 3 heads across, 2 layers down
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]      # no temporary file left


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
