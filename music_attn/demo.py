"""The demo: the library's main job on the shipped model and melodies, in seconds, offline.

`run_demo` picks a shipped melody, prints its first tokens, writes the
interactive attention page (and the PNG grid when matplotlib is installed, and
the JSON), samples an 8-bar continuation, writes it as MIDI and prints a short
summary: where the files are, which earlier notes the most focused head
attends to at the final cadence, and the continuation's notes.
"""

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from music_attn._io import output_folder
from music_attn.errors import MusicAttnError

__all__ = ["run_demo", "DemoResult"]

N_BARS = 8
FIRST_TOKENS = 24
SHIPPED_MODEL_KNOWS = ("The shipped model knows folk melodies, Bach chorales and pop songs (O'Neill's, Ryan's, "
                       "Aird's, BWV 250-438, POP909's melodies and piano parts) and reads {window} tokens at a "
                       "time; music far from these is outside what it knows.")


class DemoResult(NamedTuple):
    """Paths the demo wrote (``png`` is None without matplotlib) and what it computed."""

    page: Path
    png: Path
    json: Path
    midi: Path
    melody: Path
    maps: object
    continuation: np.ndarray  # NOTE_DTYPE notes of the new bars, in onset order


def run_demo(out_dir="music_attn_demo", *, seed=0, model=None, melody=None, echo=print, force=False):
    """Run the demo, writing into ``out_dir``; returns a `DemoResult`.

    Parameters
    ----------
    out_dir : str or Path
    seed : int
        Seeds the melody choice and the sampling (one ``np.random.Generator``).
    model : Model, optional
        Default: the shipped model (``load_model()``).
    melody : path, optional
        Default: a shipped melody picked with the seed.
    echo : callable
        Where the printed lines go.
    force : bool
        Replace read-only files of the same names too.
    """
    from music_attn.inspect.inspector import attention_maps
    from music_attn.runtime.checkpoint import load_model

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    out = output_folder(out_dir)
    shipped = model is None
    model = load_model() if model is None else model
    path, title = _pick_melody(rng) if melody is None else (Path(melody), Path(melody).stem)
    maps = attention_maps(model, path)
    if shipped:
        echo(SHIPPED_MODEL_KNOWS.format(window=model.config.max_len))
    _print_melody(echo, title, path, maps)
    decoded, continuation = _continue(model, maps, rng)
    page, png, json_path, midi = _write_all(maps, decoded, out, path, echo, force)
    _print_summary(echo, maps, (page, png, json_path, midi), continuation, time.perf_counter() - t0)
    return DemoResult(page, png, json_path, midi, path, maps, continuation)


# ----------------------------------------------------------------- steps
def _pick_melody(rng):
    """(path, title) of a shipped melody chosen with ``rng``."""
    from music_attn.training.data import melody_catalogue, shipped_melodies

    try:
        rows = [(Path(r["path"]), r.get("title") or Path(r["path"]).stem) for r in melody_catalogue()]
    except (OSError, KeyError):
        rows = [(p, p.stem) for p in shipped_melodies()]
    rows = [r for r in rows if r[0].is_file()]
    if not rows:
        raise MusicAttnError("no shipped melodies found in music_attn/assets/melodies")
    return rows[int(rng.integers(len(rows)))]


def _png_possible(echo):
    """Whether matplotlib is there to draw the PNG grid (says so when it is not)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        echo("(no PNG: PNG output needs matplotlib: pip install 'music_attn[plot]')")
        return False
    return True


def _write_all(maps, decoded, out, melody, echo, force=False):
    """Page, PNG (None without matplotlib), JSON and continued MIDI in ``out``: all or none."""
    from music_attn._io import atomic_outputs
    from music_attn.inspect.viz import render_png, write_html, write_json
    from music_attn.music.midi import write_midi

    stem = melody.stem
    names = [f"{stem}_attention.html", f"{stem}_attention.json", f"{stem}_continued.mid"]
    with_png = _png_possible(echo)
    names += [f"{stem}_attention.png"] if with_png else []
    paths = [out / name for name in names]
    output_folder(out, create=True)
    with atomic_outputs(paths, inputs=[melody], force=force) as tmp:
        write_html(maps, tmp[0])
        write_json(maps, tmp[1])
        write_midi(tmp[2], decoded.score)
        if with_png:
            render_png(maps, tmp[3])
    return paths[0], (paths[3] if with_png else None), paths[1], paths[2]


def _continue(model, maps, rng):
    """Sample ``N_BARS`` bars after the melody; (decoded melody + continuation, new notes)."""
    from music_attn.runtime.generate import generate

    tokenizer = model.tokenizer
    gen = generate(model, maps.ids, n_bars=N_BARS, max_new_tokens=model.config.max_len // 2,
                   temperature=0.9, top_p=0.95, rng=rng, no_end=True)   # the 8 bars asked for
    decoded = tokenizer.decode(gen.ids)
    before = len(tokenizer.decode(gen.ids[:gen.prompt_length]).score)
    return decoded, decoded.score.notes[before:]  # notes in onset order


# ---------------------------------------------------------------- output
def _print_melody(echo, title, path, maps):
    echo(f"Melody: {title} ({path.name}): {maps.n_notes} notes, {maps.n_tokens_in_file} tokens")
    if maps.notice:
        echo(maps.notice)
    fit = maps.model_fit
    if fit.get("validation_nats_per_token"):
        echo(f"The model reads it at {fit['nats_per_token']:.2f} nats per token "
             f"(its validation music: {fit['validation_nats_per_token']:.2f}).")
    echo(f"First {min(FIRST_TOKENS, maps.n_tokens)} tokens: " + " ".join(maps.tokens[:FIRST_TOKENS]))


def _print_summary(echo, maps, files, continuation, seconds):
    from music_attn.music.theory import spelled_names

    labels = ("interactive page", "heatmap grid (PNG)", "maps (JSON)", "melody + continuation (MIDI)")
    echo("Wrote:")
    for label, path in zip(labels, files):
        if path is not None:
            echo(f"  {label:<30} {path}")
    echo(_cadence_line(maps))
    names = " ".join(spelled_names(np.concatenate([maps.pitch, continuation["pitch"]]))[maps.n_notes:][:32])
    names += " ..." if len(continuation) > 32 else ""
    echo(f"Continuation ({N_BARS} bars, {len(continuation)} notes): {names or '(silence)'}")
    echo(f"Done in {seconds:.1f} s. Open the page in a browser: click a note to see what it attends to.")


def _cadence_line(maps):
    """Which earlier notes the most focused head attends to from the melody's last note."""
    layer, head = maps.most_focused_head()
    last = maps.n_notes - 1
    top = maps.top_attended(last, layer=layer, head=head, k=3)
    where = f"Most focused head: layer {layer + 1}, head {head + 1}. At the final cadence " \
            f"({maps.note_names[last]}, note {last + 1}, at {maps.start[last]:.2f} s) it attends to "
    if not top:
        return where + "no earlier note."
    return where + ", ".join(f"{maps.note_names[j]} (note {j + 1}, {maps.start[j]:.2f} s, {w:.2f})"
                             for j, w in top) + "."
