"""The inspector page in a real browser: headless Debian Chromium driven by Playwright (sync API).

Skipped when /usr/bin/chromium or playwright is missing; no browser is ever downloaded.
"""

import os

import numpy as np
import pytest

from music_attn.inspect.viz import write_html
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
    assert opened.page.locator("#layer option").count() == maps.n_layers
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
    assert f"{maps.note_names[12]} #13" in text and f"onset {maps.start[12]:.2f} s" in text
    assert "duration 0.45 s" in text
    top = int(np.argmax(maps.note_attention[-1].mean(0)[12][:12]))
    assert f"{maps.note_names[top]} #{top + 1}" in text


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
    tok = pytest.importorskip("music_attn.music.tokenizer")
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
