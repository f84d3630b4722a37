"""Take docs/screenshot.png and docs/heads.png: the inspector page of a piece, in headless Chromium.

Run from the repository root (needs playwright for Python and Debian's chromium):

    python scripts/screenshot.py                      # shipped model, first shipped melody
    python scripts/screenshot.py --melody tune.mid -o docs/screenshot.png --heads-out docs/heads.png
    python scripts/screenshot.py --random-model       # a tiny untrained model, when none ships yet
    python scripts/screenshot.py -m benchmarks/jsb_chorales.npz --melody data/bach/bwv144-6.mid \
        -o docs/chorale.png --heads-out ''            # a chorale's final cadence, JSB model

The page opens on the last layer with the mean of its heads (``--head N`` picks
one head, ``--head focused`` the most focused one) and a note clicked (``--note``,
counted from 1; default the last, the final cadence), so its arcs show.
``docs/heads.png`` shows the head grid for that note and the head-role table.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _model(random_model, path=None):
    from music_attn.runtime.checkpoint import load_model
    from music_attn.core.model import ModelConfig, init_model

    if not random_model:
        return load_model(path)
    from music_attn.music.tokenizers import RemiTokenizer

    tokenizer = RemiTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                         max_len=512)
    return init_model(config, np.random.default_rng(0), tokenizer=tokenizer)


def _melody(path):
    if path:
        return Path(path)
    from importlib import resources

    folder = resources.files("music_attn").joinpath("assets", "melodies")
    return sorted(Path(str(folder)).glob("*.mid"))[0]


def _view(maps, head):
    """(layer, head index) to show; head index n_heads is the page's "mean of heads"."""
    if head == "focused":
        return maps.most_focused_head()
    if head == "mean":
        return maps.n_layers - 1, maps.n_heads
    return maps.n_layers - 1, int(head) - 1


def shoot(page_path, out, heads_out, layer, head, note):
    """Open ``page_path``, pick ``layer``/``head``, click ``note``; save the page to ``out`` and the
    head grid with the role table to ``heads_out``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(Path(page_path).resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        page.select_option("#layer", str(layer))
        page.select_option("#head", str(head))
        page.locator(f"rect.note[data-i='{note}']").scroll_into_view_if_needed()
        page.click(f"rect.note[data-i='{note}']")
        page.mouse.move(2, 2)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1280, "height": _roll_bottom(page)})
        if heads_out:
            box = page.evaluate("""() => { const a = document.getElementById('heads').getBoundingClientRect(),
                                               b = document.getElementById('roles').getBoundingClientRect();
                                           return [a.top + scrollY, b.bottom + scrollY]; }""")
            page.screenshot(path=str(heads_out), full_page=True,
                            clip={"x": 0, "y": box[0] - 8, "width": 1280, "height": box[1] - box[0] + 16})
        browser.close()


def _roll_bottom(page):
    """Page height down to the end of the piano roll (the screenshot's lower edge)."""
    return page.evaluate("() => document.getElementById('hint').getBoundingClientRect().bottom + scrollY + 8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--melody", help="MIDI file (default: the first shipped melody)")
    parser.add_argument("-o", "--out", default="docs/screenshot.png")
    parser.add_argument("--heads-out", default="docs/heads.png", help="head grid and role table ('' for none)")
    parser.add_argument("--note", type=int, help="note to click, from 1 (default: the last)")
    parser.add_argument("--random-model", action="store_true", help="tiny random model instead of the shipped one")
    parser.add_argument("-m", "--model", help="checkpoint (default: the shipped model)")
    parser.add_argument("--head", default="mean", help="'mean' (of the last layer's heads), 'focused' or a head number")
    args = parser.parse_args()
    from music_attn.inspect.inspector import attention_maps
    from music_attn.inspect.viz import write_html
    from music_attn.music.midi import read_midi

    melody = _melody(args.melody)
    maps = attention_maps(_model(args.random_model, args.model), melody)
    layer, head = _view(maps, args.head)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_html(maps, Path(tmp) / "page.html", score=read_midi(melody))
        note = (args.note or maps.n_notes) - 1
        shoot(Path(tmp) / "page.html", args.out, args.heads_out, layer, head, note)
    print(f"wrote {args.out} {args.heads_out} ({maps!r}, layer {layer + 1}, head index {head}, note {note + 1})")


if __name__ == "__main__":
    main()
