"""``music-attn bench inspect``: whole pieces of growing length through ``inspect``, time, memory, sizes.

Each piece is generated (`make_piece`): the shipped melodies one after another
until the piece is long enough, played by ``voices`` tracks at once (the tune,
and copies a third, a sixth and an octave and a half lower), so the lengths grow
the way a quartet's do.  Every piece is inspected whole, in a child process
that loads the shipped model, runs `attention_maps` and writes the page and the
JSON; the table gives notes, tokens, seconds (wall time of the inspection and
the writes, not the model load), the child's CPU seconds (user + system, all
of it), the forward pass's FLOP count beside this machine's matmul rate measured
in the same child (the forward at that rate is the limit, on screen beside the
time), its peak resident memory (``ru_maxrss``) and the output sizes, so the
growth with length is visible.  The target: the 6,398-note size in under 3 s on a
quiet machine and 1 GB, page under 15 MB, JSON under 25 MB.

Run: ``music-attn bench inspect [--quick]``.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mido
import numpy as np

__all__ = ["run", "make_piece"]

SIZES = (800, 1600, 3200, 6398)
QUICK_SIZES = (200, 400)
VOICES = 4
TICKS_PER_BEAT = 480
_INTERVALS = (0, -4, -9, -19)        # semitones below the tune of each voice

_CHILD = r"""
import json, sys, time
from music_attn.runtime.checkpoint import load_model
from music_attn.inspect.inspector import attention_maps
from music_attn.inspect.viz import write_html, write_json
from music_attn.errors import MusicAttnError
from music_attn._budget import keep_freed_memory
keep_freed_memory()                    # as the command line does
model = load_model()
t0 = time.perf_counter()
maps = attention_maps(model, sys.argv[1], progress=False)
write_json(maps, sys.argv[3])
try:
    write_html(maps, sys.argv[2])
except MusicAttnError as exc:          # a page that cannot draw this length yet
    print(exc, file=sys.stderr)
seconds = time.perf_counter() - t0
from music_attn.bench.model import _matmul_peak
from music_attn.runtime.windows import spans
windows = spans(maps.n_tokens, maps.window)
flops = sum(model.forward_flops(1, s.stop - s.start) for s in windows)
print(json.dumps({"notes": maps.n_notes, "tokens": maps.n_tokens, "seconds": seconds,
                  "gflop": flops / 1e9, "rate": _matmul_peak() / 1e9}))
"""


def make_piece(path, n_notes, *, voices=VOICES):
    """Write a MIDI file of about ``n_notes`` notes: shipped melodies in a row, in ``voices`` tracks.

    Returns the number of notes written (exactly ``n_notes`` unless the melodies
    give fewer onsets than needed, which they never do).
    """
    from music_attn.music.midi import read_midi
    from music_attn.training.data import shipped_melodies

    tunes = [read_midi(p).notes for p in shipped_melodies()]
    rows, offset, i = [], 0.0, 0
    while len(rows) * voices < n_notes:
        tune = tunes[i % len(tunes)]
        rows += [(p, offset + s, offset + e) for p, s, e in zip(tune["pitch"], tune["start_beat"], tune["end_beat"])]
        offset = np.ceil(offset + tune["end_beat"].max())
        i += 1
    notes = [(v, p + _INTERVALS[v % len(_INTERVALS)], s, e) for p, s, e in rows for v in range(voices)]
    notes = sorted(notes, key=lambda n: (n[2], n[0]))[:n_notes]
    _write(path, notes, voices)
    return len(notes)


def _write(path, notes, voices):
    """(voice, pitch, start beat, end beat) rows -> a type-1 file with one named track per voice."""
    mid = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    for v in range(voices):
        events = []
        for _, pitch, s, e in (n for n in notes if n[0] == v):
            pitch = int(np.clip(pitch, 21, 108))
            events += [(round(s * TICKS_PER_BEAT), 1, mido.Message("note_on", note=pitch, velocity=80, channel=v)),
                       (round(e * TICKS_PER_BEAT), 0, mido.Message("note_off", note=pitch, channel=v))]
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=f"voice {v + 1}", time=0)])
        now = 0
        for tick, _, msg in sorted(events, key=lambda x: (x[0], x[1])):
            track.append(msg.copy(time=tick - now))
            now = tick
        mid.tracks.append(track)
    mid.save(path)


def measure(path, out_dir):
    """Inspect ``path`` whole in a child process: dict of notes, tokens, seconds, peak MB, output MB."""
    out_dir = Path(out_dir)
    html, js, log = out_dir / "piece.html", out_dir / "piece.json", out_dir / "child.txt"
    with open(log, "w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(html), str(js)],
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)                       # the child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().strip().splitlines() or [f"exit {proc.returncode}"]
    peak = usage.ru_maxrss / 1024                                      # kB -> MB
    cpu = usage.ru_utime + usage.ru_stime                              # the whole child, model load included
    if proc.returncode:
        return {"error": lines[-1], "peak_mb": peak}
    row = json.loads(lines[-1])
    row.update(peak_mb=peak, cpu=cpu, html_mb=html.stat().st_size / 1e6 if html.is_file() else float("nan"),
               json_mb=js.stat().st_size / 1e6)
    return row


def run(quick=False):
    """Print the table (see the module docstring)."""
    sizes = QUICK_SIZES if quick else SIZES
    print(f"inspect, whole pieces ({VOICES} voices, shipped model); target at 6,398 notes: "
          f"< 3 s (quiet machine), < 1 GB, page < 15 MB, JSON < 25 MB")
    print("  GFLOP: the forward pass over every window; GFLOP/s: this machine's float32 matmul rate, "
          "measured in the same child; limit: GFLOP / rate, the forward at that rate")
    print(f"  {'notes':>6} {'tokens':>7} {'seconds':>8} {'CPU s':>6} {'GFLOP':>6} {'GFLOP/s':>7} {'limit s':>7} "
          f"{'peak MB':>8} {'page MB':>8} {'JSON MB':>8} {'s/1k notes':>10} {'JSON MB/1k':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"piece_{n}.mid"
            for old in Path(tmp).glob("piece.*"):
                old.unlink()
            make_piece(path, n)
            row = measure(path, tmp)
            if "error" in row:
                print(f"  {n:>6}  failed: {row['error']} (peak {row['peak_mb']:.0f} MB)")
                continue
            k = row["notes"] / 1000
            print(f"  {row['notes']:>6} {row['tokens']:>7} {row['seconds']:>8.1f} {row['cpu']:>6.1f} {row['gflop']:>6.1f} "
                  f"{row['rate']:>7.1f} {row['gflop'] / row['rate']:>7.2f} {row['peak_mb']:>8.0f} "
                  f"{row['html_mb']:>8.2f} {row['json_mb']:>8.2f} {row['seconds'] / k:>10.2f} "
                  f"{row['json_mb'] / k:>10.2f}")
