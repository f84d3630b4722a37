"""The inspector page in a real browser: headless Debian Chromium driven by Playwright (sync API).

Skipped when /usr/bin/chromium or playwright is missing; no browser is ever downloaded.
"""

import os

import numpy as np
import pytest

from music_attn.inspect.inspector import AttentionMaps
from music_attn.inspect.viz import write_html
from music_attn.music.theory import note_name
from test_viz import synthetic_maps

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def maps():
    return synthetic_maps(40, L=2, H=3, seed=3)


@pytest.fixture(scope="module")
def page_file(maps, tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "melody.html"
    write_html(maps, path)
    return path


class Opened:
    """A loaded page with everything it reported: console errors, page errors, dialogs."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.errors, self.dialogs = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-ready='1']", timeout=10_000)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def arcs(self):
        """(key note, weight, stroke width) of every arc drawn, in drawing order."""
        return self.page.eval_on_selector_all(
            "#arcs path.arc",
            "els => els.map(e => [Number(e.dataset.j), Number(e.dataset.w), Number(e.getAttribute('stroke-width'))])")

    def pick_head(self, head):
        self.page.select_option("#head", str(head))


@pytest.fixture
def opened(browser, page_file):
    o = Opened(browser, page_file)
    yield o
    o.page.close()


def test_page_loads_without_console_errors(opened, maps):
    assert opened.page.locator("rect.note").count() == maps.n_notes
    has_rollout = getattr(maps, "rollout", None) is not None
    assert opened.page.locator("#layer option").count() == maps.n_layers + has_rollout     # + rollout
    assert opened.page.locator("#head option").count() == maps.n_heads + 1     # + mean of heads
    opened.page.click("#play")
    opened.page.wait_for_timeout(300)
    assert opened.errors == []


def test_clicking_a_note_draws_arcs_to_the_notes_it_attends_to(opened, maps):
    assert opened.arcs() == []
    opened.page.click("rect.note[data-i='25']")
    arcs = opened.arcs()
    assert arcs, "a click draws arcs"
    row = maps.note_attention[-1].mean(0)[25]                      # default view: last layer, mean of heads
    strongest = max(arcs, key=lambda a: a[2])
    assert row[strongest[0]] == pytest.approx(row[:25].max(), abs=1 / 255)
    for j, w, _ in arcs:
        assert j < 25 and w == pytest.approx(row[j], abs=0.5 / 255 + 1e-3)
    assert "selected" in opened.page.get_attribute("rect.note[data-i='25']", "class")
    assert opened.errors == []


def test_changing_the_head_changes_the_arcs(opened, maps):
    opened.page.click("rect.note[data-i='30']")
    mean = opened.arcs()
    seen = []
    for head in range(maps.n_heads):
        opened.pick_head(head)
        arcs = opened.arcs()
        row = maps.note_attention[-1, head, 30]
        assert max(arcs, key=lambda a: a[2])[0] in np.flatnonzero(row >= row[:30].max() - 1 / 255)
        seen.append(arcs)
    assert all(a != mean for a in seen) and seen[0] != seen[1]
    opened.page.select_option("#layer", "0")
    assert opened.arcs() != seen[-1]
    assert opened.errors == []


def test_hovering_a_note_shows_its_name_onset_and_top_attended_notes(opened, maps):
    opened.page.hover("rect.note[data-i='12']")
    tip = opened.page.locator("#tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert f" #13 (MIDI {maps.pitch[12]})" in text and f"onset {maps.start[12]:.2f} s" in text
    assert "lasts 0.45 s" in text
    top = int(np.argmax(maps.note_attention[-1].mean(0)[12][:12]))
    assert f" #{top + 1} " in text


def test_token_heatmap_is_painted_below_the_diagonal_only(opened, maps):
    stats = opened.page.evaluate("""() => {
        const c = document.getElementById('heatmap'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let below = 0, above = 0;
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
            const o = 4 * (y * c.width + x), ink = d[o] < 200;
            if (ink && x <= y) below++; if (ink && x > y) above++;
        }
        return [c.width, below, above];
    }""")
    assert stats[0] == maps.n_tokens and stats[1] > maps.n_tokens and stats[2] == 0


def test_play_highlights_the_note_that_is_sounding(opened):
    opened.page.click("#play")
    opened.page.wait_for_selector("rect.note.playing", timeout=5_000)
    assert opened.page.inner_text("#play").endswith("Stop")
    opened.page.click("#play")
    assert opened.page.locator("rect.note.playing").count() == 0
    assert opened.errors == []


def _evil_midi(path, track_name, lyric):
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("track_name", name=track_name, time=0))
    track.append(mido.MetaMessage("lyrics", text=lyric, time=0))
    for k, pitch in enumerate([60, 62, 64, 65, 67, 65, 64, 62]):
        track.append(mido.Message("note_on", note=pitch, velocity=80, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=480))
    mid.save(path)


def test_markup_in_midi_texts_is_shown_as_text_and_never_runs(browser, tmp_path):
    tok = pytest.importorskip("music_attn.music.tokenizers")
    model = pytest.importorskip("music_attn.core.model")
    from music_attn.inspect.inspector import attention_maps

    midi = tmp_path / "<img src=x onerror=alert(3)>.mid"
    _evil_midi(midi, "<script>alert(1)</script>", "<img src=x onerror=alert(2)>")
    tokenizer = tok.RemiTokenizer()
    config = model.ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2,
                               d_ff=32, max_len=128)
    maps = attention_maps(model.init_model(config, np.random.default_rng(0)), midi, tokenizer=tokenizer)
    write_html(maps, tmp_path / "evil.html")
    o = Opened(browser, tmp_path / "evil.html")
    o.page.click("rect.note[data-i='3']")
    o.page.hover("rect.note[data-i='5']")
    o.page.wait_for_timeout(300)
    assert "<script>alert(1)</script>" in o.page.text_content("#tracks")
    assert "<img src=x onerror=alert(2)>" in o.page.text_content("#lyrics")
    assert o.page.text_content("#title") == midi.name
    assert o.page.locator("img").count() == 0 and o.page.locator("body script").count() == 2
    assert o.dialogs == [] and o.errors == []
    o.page.close()


# ----------------------------------------------------------- read as music
@pytest.fixture(scope="module")
def music_page(tmp_path_factory):
    """A 3/4 tune of 24 notes (8 bars) with random attention and its rollout, rendered with its score."""
    from test_viz import _maps_for, _score

    folder = tmp_path_factory.mktemp("music")
    notes = [(60 + (k * 5) % 12, 480 * k, 480) for k in range(24)]
    score = _score(folder, notes, metre=(3, 4))
    maps = _maps_for(score)                   # dense attention given: the maps compute its rollout
    assert maps.rollout is not None
    write_html(maps, folder / "tune.html", score=score)
    return maps, folder / "tune.html"


def test_bar_numbers_and_the_metre_are_drawn(browser, music_page):
    o = Opened(browser, music_page[1])
    numbers = o.page.eval_on_selector_all("text.barnum", "els => els.map(e => e.textContent)")
    assert numbers[:3] == ["1", "2", "3"] and "8" in numbers
    assert o.page.locator("line.barline").count() == 9                    # 8 bars, closed
    assert o.page.text_content("text.meter") == "3/4"
    assert o.errors == []
    o.page.close()


def test_zoom_buttons_change_the_time_scale(browser, music_page):
    o = Opened(browser, music_page[1])
    width = lambda: float(o.page.get_attribute("rect.note[data-i='3']", "width"))     # noqa: E731
    scale, w = float(o.page.get_attribute("#roll", "data-pxs")), width()
    o.page.click("#zoom-in")
    assert float(o.page.get_attribute("#roll", "data-pxs")) == pytest.approx(1.25 * scale, rel=1e-3)
    assert width() + 1 == pytest.approx(1.25 * (w + 1), rel=1e-3)         # a note is duration * scale - 1 wide
    o.page.click("#zoom-out")
    assert float(o.page.get_attribute("#roll", "data-pxs")) == pytest.approx(scale, rel=1e-3)
    assert o.errors == []
    o.page.close()


def test_head_grid_has_a_cell_per_layer_and_head_and_a_click_selects_it(opened, maps):
    L, H = maps.n_layers, maps.n_heads
    assert opened.page.locator("#headgrid canvas.cell").count() == L * H
    opened.page.click("rect.note[data-i='30']")
    opened.page.click("#headgrid canvas.cell[data-layer='0'][data-head='1']")
    assert opened.page.input_value("#layer") == "0" and opened.page.input_value("#head") == "1"
    row = maps.note_attention[0, 1, 30]
    strongest = max(opened.arcs(), key=lambda a: a[2])[0]
    assert row[strongest] >= row[:31].max() - 1 / 255
    assert opened.page.locator("#headgrid canvas.cell.selected").count() == 1
    assert opened.errors == []


def test_clicking_a_role_row_selects_its_head(opened):
    row = opened.page.locator("#roletable tbody tr").nth(2)
    layer, head = row.get_attribute("data-layer"), row.get_attribute("data-head")
    row.click()
    assert (opened.page.input_value("#layer"), opened.page.input_value("#head")) == (layer, head)
    assert "selected" in row.get_attribute("class")


def test_rollout_is_a_choice_beside_the_layers(browser, music_page):
    maps, path = music_page
    o = Opened(browser, path)
    o.page.select_option("#layer", "rollout")
    o.page.click("rect.note[data-i='20']")
    rows = maps.note_rows("rollout")
    row = np.zeros(maps.n_notes)
    row[rows[1][rows[0][20]:rows[0][21]]] = rows[2][rows[0][20]:rows[0][21]]
    for j, w, _ in o.arcs():
        assert w == pytest.approx(row[j], abs=0.5 / 255 + 1e-3)
    earlier = row[:20]                                          # arcs go to earlier notes (itself: a ring)
    assert max(o.arcs(), key=lambda a: a[2])[0] in np.flatnonzero(earlier >= earlier.max() - 1 / 255)
    assert o.page.is_disabled("#head") and o.errors == []
    o.page.close()


# An AudioContext whose clock the test sets (window.__clock), so playback can be stepped.
FAKE_AUDIO = """
window.__clock = 0;
class FakeParam { setValueAtTime() {} linearRampToValueAtTime() {} setTargetAtTime() {} }
class FakeNode { constructor() { this.gain = new FakeParam(); this.frequency = new FakeParam(); }
                 connect(n) { return n; } start() {} stop() {} }
window.AudioContext = class { constructor() { this.state = 'running'; this.destination = new FakeNode(); }
  get currentTime() { return window.__clock; }
  createOscillator() { return new FakeNode(); } createGain() { return new FakeNode(); }
  createBiquadFilter() { return new FakeNode(); } resume() {} };
"""


def test_during_playback_the_arcs_follow_the_note_being_played(browser, page_file, maps):
    o = Opened.__new__(Opened)
    o.page = browser.new_page(viewport={"width": 1200, "height": 900})
    o.errors = []
    o.page.on("pageerror", lambda e: o.errors.append(str(e)))
    o.page.add_init_script(FAKE_AUDIO)
    o.page.goto(page_file.as_uri())
    o.page.wait_for_selector("body[data-ready='1']")
    o.page.click("#play")                                    # starts 0.15 s after the clock (0)
    for i in (5, 21):
        o.page.evaluate(f"window.__clock = {0.15 + maps.start[i] + 0.05}")
        o.page.wait_for_selector(f"#arcs[data-from='{i}']", state="attached", timeout=5_000)
        assert {j for j, _, _ in o.arcs()} <= set(range(i))
        assert "playing" in o.page.get_attribute(f"rect.note[data-i='{i}']", "class")
    assert o.errors == []
    o.page.close()


def test_saved_svg_is_well_formed_and_shows_the_arcs(opened, tmp_path):
    import xml.etree.ElementTree as ET

    opened.page.click("rect.note[data-i='25']")
    with opened.page.expect_download() as info:
        opened.page.click("#save-svg")
    info.value.save_as(tmp_path / "view.svg")
    root = ET.parse(tmp_path / "view.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == ns + "svg"
    arcs = [e for e in root.iter(ns + "path") if "arc" in e.get("class", "")]
    assert len(arcs) == len(opened.arcs()) > 0
    assert len([e for e in root.iter(ns + "rect") if "note" in e.get("class", "")]) > 10
    with opened.page.expect_download() as info:
        opened.page.click("#save-png")
    info.value.save_as(tmp_path / "view.png")
    assert (tmp_path / "view.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert opened.errors == []


# --------------------------------------------------------------- long pieces
class LongPiece:
    """Duck-typed maps of an n-note piece with banded note attention (each note sees the `band`
    notes before it), given as CSR rows the way long pieces are stored: no N x N array anywhere."""

    def __init__(self, n, L=2, H=4, band=48, seed=0):
        rng = np.random.default_rng(seed)
        self.n_layers, self.n_heads, self.n_notes, self.window = L, H, n, 256
        self.pitch = 60 + np.cumsum(rng.integers(-3, 4, n)).clip(-20, 20)
        self.start = np.arange(n) * 0.25
        self.end, self.velocity = self.start + 0.22, np.full(n, 80)
        self.note_names = [note_name(p) for p in self.pitch]
        self.surprise = rng.exponential(2.0, n)
        self.note_of_token = np.repeat(np.arange(n), 3)
        self.structure_share = rng.random((L, H, n)) * 0.2
        self.name, self.texts, self.notice, self.n_tokens_in_file = "long.mid", {}, "", 3 * n
        lo = np.maximum(0, np.arange(n) - band + 1)
        self._indptr = np.concatenate(([0], np.cumsum(np.arange(n) - lo + 1)))
        self._keys = np.concatenate([np.arange(a, i + 1) for i, a in enumerate(lo)])
        self._w = rng.random((L, H, self._keys.size))
        sums = np.add.reduceat(self._w, self._indptr[:-1], axis=-1)
        self._w *= 0.8 / np.repeat(sums, np.diff(self._indptr), axis=-1)

    def note_rows(self, layer, head):
        return self._indptr, self._keys, self._w[layer, head]


@pytest.mark.slow
def test_clicks_and_head_changes_stay_fast_on_a_10000_note_page(browser, tmp_path):
    maps = LongPiece(10_000)
    write_html(maps, tmp_path / "long.html")
    o = Opened(browser, tmp_path / "long.html")
    assert o.page.locator("rect.note").count() < 600                       # only the visible stretch
    times = o.page.evaluate("""() => {
        const out = [], notes = Array.from(document.querySelectorAll('rect.note')).slice(20, 60);
        const head = document.getElementById('head'), layer = document.getElementById('layer');
        for (let k = 0; k < notes.length; k++) {
            let t = performance.now();
            notes[k].dispatchEvent(new MouseEvent('click', {bubbles: true}));
            out.push(performance.now() - t);
            t = performance.now();
            head.value = String(k % 5); head.dispatchEvent(new Event('change'));
            if (k % 7 === 0) { layer.value = String(k % 2); layer.dispatchEvent(new Event('change')); }
            out.push(performance.now() - t);
        }
        return out;
    }""")
    times.sort()
    assert len(times) == 80 and o.page.locator("#arcs path.arc").count() > 0
    assert times[len(times) // 2] < 50, times          # median under 50 ms, on a loaded machine
    assert times[-1] < 1000, times                     # and nothing hangs
    assert o.errors == []
    o.page.close()


def test_a_passage_from_the_middle_opens_at_its_first_bar_not_at_empty_bars(browser, tmp_path):
    maps = synthetic_maps(20, L=1, H=2, seed=5)
    maps.start, maps.end = maps.start + 30.0, maps.end + 30.0      # the passage begins 30 s in
    write_html(maps, tmp_path / "passage.html")
    o = Opened(browser, tmp_path / "passage.html")
    assert float(o.page.get_attribute("rect.note[data-i='0']", "x")) < 20
    o.page.click("rect.note[data-i='10']")
    assert o.arcs() and o.errors == []
    o.page.close()


# ----------------------------------------------------- what a musician meets (issue 25)
def _parts_page(folder, *, drums=False):
    """Maps of 3 parts all named "Viola" plus a cello (or, with ``drums``, a drum kit alone) as
    notes with track and channel columns, random attention; the page written to ``folder``."""
    rng = np.random.default_rng(5)
    n = 24
    track = np.zeros(n, int) if drums else np.array([1, 2, 3, 4] * (n // 4))
    pitch = (np.array([36, 42, 38, 42] * (n // 4)) if drums
             else np.array([67, 62, 55, 43] * (n // 4)) + np.repeat(np.arange(n // 4) % 3, 4))
    start = np.repeat(np.arange(n // 4) * 0.5, 4)
    notes = {"pitch": pitch, "start": start, "end": start + 0.45, "track": track,
             "channel": np.full(n, 9 if drums else 0)}
    att = np.tril(rng.random((2, 2, n, n))) + 1e-3 * np.eye(n)
    att /= att.sum(-1, keepdims=True)
    texts = {"tracks": ["Kit"] if drums else ["Serenade", "Viola", "Viola", "Viola", "Cello"], "lyrics": ""}
    maps = AttentionMaps.from_arrays(att, np.arange(n), notes, name="drums.mid" if drums else "serenade.mid",
                                     texts=texts)
    path = folder / ("drums.html" if drums else "serenade.html")
    write_html(maps, path)
    return maps, path


def test_tracks_that_share_a_name_are_told_apart_on_the_page(browser, tmp_path):
    _, path = _parts_page(tmp_path)
    o = Opened(browser, path)
    legend = o.page.text_content("#legend")
    assert all(label in legend for label in ("1 · Viola", "2 · Viola", "3 · Viola", "4 · Cello"))
    assert o.page.text_content("#tracks") == "Tracks: 1 · Viola, 2 · Viola, 3 · Viola, 4 · Cello"
    o.page.hover("rect.note[data-i='5']")                    # the second note of track 2
    assert "2 · Viola" in o.page.text_content("#tooltip")
    o.page.click("rect.note[data-i='6']")
    assert "3 · Viola" in o.page.text_content("#info")
    assert o.errors == []
    o.page.close()


def test_a_drum_page_has_no_key_and_names_the_drums(browser, tmp_path):
    maps, path = _parts_page(tmp_path, drums=True)
    assert maps.note_names[:3] == ["Bass Drum 1", "Closed Hi Hat", "Acoustic Snare"]
    o = Opened(browser, path)
    facts = o.page.text_content("#facts")
    assert "drums only: no key" in facts and "minor" not in facts and "major" not in facts
    o.page.hover("rect.note[data-i='2']")
    assert "Acoustic Snare" in o.page.text_content("#tooltip")
    assert o.errors == []
    o.page.close()


def test_saved_views_carry_a_legend_of_tracks_head_and_selected_note(browser, tmp_path):
    import xml.etree.ElementTree as ET

    _, path = _parts_page(tmp_path)
    o = Opened(browser, path)
    o.page.click("rect.note[data-i='5']")
    o.pick_head(1)
    with o.page.expect_download() as info:
        o.page.click("#save-svg")
    info.value.save_as(tmp_path / "view.svg")
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(tmp_path / "view.svg").getroot()
    legend = next(g for g in root.iter(ns + "g") if g.get("class") == "legend")
    texts = {t.get("class"): t.text for t in legend.iter(ns + "text") if t.get("class") != "track"}
    tracks = [t.text for t in legend.iter(ns + "text") if t.get("class") == "track"]
    swatches = [r.get("fill") for r in legend.iter(ns + "rect") if r.get("class") == "swatch"]
    assert texts["view"] == "serenade.mid · layer 2, head 2"
    assert texts["selected-note"].startswith("selected: ") and "#6" in texts["selected-note"]
    assert texts["selected-note"].endswith("2 · Viola")
    assert tracks == ["1 · Viola", "2 · Viola", "3 · Viola", "4 · Cello"] and len(set(swatches)) == 4
    # the roll sits below the legend, the arcs still in it
    assert len([e for e in root.iter(ns + "path") if "arc" in e.get("class", "")]) > 0
    with o.page.expect_download() as info:
        o.page.click("#save-png")
    info.value.save_as(tmp_path / "view.png")
    png = (tmp_path / "view.png").read_bytes()
    height = int.from_bytes(png[20:24], "big")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and height == 2 * int(float(root.get("height")))
    assert o.errors == []
    o.page.close()


def test_jumping_to_every_head_keeps_its_heading_and_top_row_below_the_control_bar(browser, page_file):
    o = Opened(browser, page_file)
    o.page.set_viewport_size({"width": 700, "height": 700})        # a narrow window: the bar wraps
    o.page.goto(page_file.as_uri() + "#heads")
    o.page.wait_for_selector("body[data-ready='1']")
    o.page.evaluate("document.getElementById('heads').scrollIntoView()")
    bar = o.page.eval_on_selector("#bar", "e => e.getBoundingClientRect().bottom")
    heading = o.page.eval_on_selector("#heads h2", "e => e.getBoundingClientRect().top")
    first_cell = o.page.eval_on_selector("#headgrid canvas.cell", "e => e.getBoundingClientRect().top")
    assert bar <= heading < first_cell
    o.page.close()
