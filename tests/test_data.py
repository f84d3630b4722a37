"""Tests of music_attn.training.data: the shipped corpus, its split, the token cache,
worker processes, transposition augmentation and the training-window sampler."""

import csv
import re
import shutil
from collections import defaultdict
from pathlib import Path

import mido
import numpy as np
import pytest

from music_attn.training import data
from music_attn.errors import MidiError
from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer, Tokenizer

DATA = Path(__file__).resolve().parent.parent / "data"
needs_corpus = pytest.mark.skipif(not (DATA / "MANIFEST.csv").is_file(), reason="no data/ corpus")


def manifest():
    with open(DATA / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tokenizers():
    return [RemiTokenizer(), PerformanceTokenizer()]


def small_corpus_files(n):
    """The n smallest melodies of the corpus (fast to tokenize), by name for stability."""
    rows = sorted(manifest(), key=lambda r: (int(r["notes"]), r["file"]))
    return [DATA / r["file"] for r in rows if r["collection"] != "bach"][:n] + [
        DATA / r["file"] for r in rows if r["collection"] == "bach"][:1]


@pytest.fixture
def midi_folder(tmp_path):
    folder = tmp_path / "midi"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(small_corpus_files(5)):
        shutil.copy(path, folder / ("sub" if i % 2 else "") / path.name)
    return folder


# ----------------------------------------------------------------------------- manifest + split


@needs_corpus
def test_manifest_rows_match_midi_files_on_disk():
    listed = [r["file"] for r in manifest()]
    collections = {r["collection"] for r in manifest()}           # not data/pop909 (git-ignored, its own manifest)
    on_disk = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.mid")
                     if p.relative_to(DATA).parts[0] in collections)
    assert len(listed) == len(set(listed))
    assert sorted(listed) == on_disk


@needs_corpus
def test_manifest_note_counts_and_metres_agree_with_the_midi_files():
    rows = manifest()[::25]  # every 25th file: ~180 files read independently with mido
    for row in rows:
        mid = mido.MidiFile(DATA / row["file"])
        notes = sum(m.type == "note_on" and m.velocity > 0 for t in mid.tracks for m in t)
        ts = [m for m in mid.tracks[0] if m.type == "time_signature"]
        assert notes == int(row["notes"]), row["file"]
        assert f"{ts[0].numerator}/{ts[0].denominator}" == row["metre"].split(";")[0], row["file"]


@needs_corpus
def test_corpus_holds_the_four_collections_and_common_metres():
    rows = manifest()
    assert {r["collection"] for r in rows} == {"oneills1850", "ryansMammoth", "airdsAirs", "bach"}
    metres = {m for r in rows for m in r["metre"].split(";")}
    assert {"3/4", "6/8", "2/4", "4/4"} <= metres
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 50 * 2**20


@needs_corpus
def test_split_is_disjoint_by_tune():
    splits = defaultdict(set)
    for row in manifest():
        splits[data.tune_key(row["title"])].add(row["split"])
        splits["title:" + row["title"].lower()].add(row["split"])
    assert all(len(s) == 1 for s in splits.values())


@needs_corpus
def test_split_column_is_reproduced_from_titles_and_holds_about_a_tenth():
    rows = manifest()
    assert all(r["split"] == data.split_for_title(r["title"]) for r in rows)
    share = np.mean([r["split"] == "validation" for r in rows])
    assert 0.07 < share < 0.13


@needs_corpus
def test_load_split_returns_disjoint_existing_paths_covering_the_corpus():
    train, valid = data.load_split(DATA, "train"), data.load_split(DATA, "validation")
    assert not set(train) & set(valid)
    assert len(train) + len(valid) == len(data.load_split(DATA, "all")) == len(manifest())
    assert all(p.is_file() for p in valid)


def test_tune_key_merges_spellings_of_one_tune():
    assert data.tune_key("The Acacia -- Reel") == "acacia"
    assert data.tune_key("acacia") == "acacia"
    assert data.tune_key("Ich dank’ dir, lieber Herre") == "ichdankdirlieberherre"
    assert data.tune_key("Wie schön leuchtet") == "wieschonleuchtet"


def test_split_for_title_is_stable_and_near_the_requested_fraction():
    titles = [f"Tune number {i}" for i in range(4000)]
    first = [data.split_for_title(t) for t in titles]
    assert first == [data.split_for_title(t) for t in titles]
    share = first.count("validation") / len(first)
    assert abs(share - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(first))  # 4 sigma
    assert data.split_for_title("The Acacia") == data.split_for_title("Acacia -- Reel")


def test_load_split_rejects_unknown_split_and_missing_manifest(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="MANIFEST.csv"):
        data.load_split(tmp_path, "train")


# ----------------------------------------------------------------------------- tokenize + cache


@needs_corpus
def test_tokenize_folder_matches_direct_encoding_in_sorted_order(midi_folder, tmp_path):
    tok = tokenizers()[0]
    arrays, paths = data.tokenize_folder(midi_folder, tok, cache_dir=tmp_path / "c",
                                         progress=False, return_paths=True)
    assert paths == sorted(midi_folder.rglob("*.mid"))
    for ids, path in zip(arrays, paths):
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, np.asarray(tok.encode(path).ids))


def counting(tokenizer):
    """Wrap ``tokenizer.encode`` to count calls (jobs=1 runs in this process)."""
    calls = []
    encode = tokenizer.encode

    def counted(path):
        calls.append(Path(path).name)
        return encode(path)

    tokenizer.encode = counted
    return calls


@needs_corpus
def test_cache_is_reused_then_invalidated_by_file_content_and_tokenizer_config(midi_folder,
                                                                               tmp_path):
    cache = tmp_path / "cache"
    tok = RemiTokenizer()
    calls = counting(tok)
    first = data.tokenize_folder(midi_folder, tok, cache_dir=cache, progress=False)
    assert len(calls) == 6
    second = data.tokenize_folder(midi_folder, tok, cache_dir=cache, progress=False)
    assert len(calls) == 6  # all six from the cache
    assert all(np.array_equal(a, b) for a, b in zip(first, second))

    victim = sorted(midi_folder.rglob("*.mid"))[0]
    newcomer = small_corpus_files(7)[5]  # a tune not yet in the folder
    shutil.copy(newcomer, victim)  # new content under an old name
    third = data.tokenize_folder(midi_folder, tok, cache_dir=cache, progress=False)
    assert calls[6:] == [victim.name]
    np.testing.assert_array_equal(third[0], tok.encode(newcomer).ids)

    other = Tokenizer.from_dict({**tok.to_dict(), **changed_config(tok.to_dict())})
    other_calls = counting(other)
    data.tokenize_folder(midi_folder, other, cache_dir=cache, progress=False)
    assert len(other_calls) == 6  # a different config never reads the old cache


def changed_config(config):
    """A config differing in one numeric setting (any tokenizer with an int option)."""
    for key, value in sorted(config.items()):
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return {key: value * 2}
    pytest.skip("tokenizer config has no integer option to change")


@needs_corpus
def test_corrupt_cache_entry_is_rebuilt(midi_folder, tmp_path):
    tok = tokenizers()[0]
    cache = tmp_path / "cache"
    first = data.tokenize_folder(midi_folder, tok, cache_dir=cache, progress=False)
    for npy in cache.rglob("*.npy"):
        npy.write_bytes(b"not an array")
    again = data.tokenize_folder(midi_folder, tok, cache_dir=cache, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


@needs_corpus
def test_unreadable_files_are_reported_and_skipped(midi_folder, tmp_path, caplog):
    tok = tokenizers()[0]
    (midi_folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    (midi_folder / "text.midi").write_text("not midi at all")
    failures = []
    arrays = data.tokenize_folder(midi_folder, tok, cache=False, progress=False,
                                  failures=failures)
    assert len(arrays) == 6
    assert sorted(p.name for p, _ in failures) == ["broken.mid", "text.midi"]
    assert all(p.name in msg for p, msg in failures)
    assert "broken.mid" in caplog.text


@needs_corpus
def test_two_worker_processes_give_the_same_arrays_as_one(midi_folder, tmp_path):
    for tok in tokenizers():
        (midi_folder / "broken.mid").write_bytes(b"\x00" * 40)
        one = data.tokenize_folder(midi_folder, tok, jobs=1, cache=False, progress=False)
        failures = []
        two = data.tokenize_folder(midi_folder, tok, jobs=2, cache_dir=tmp_path / "c",
                                   progress=False, failures=failures)
        assert len(one) == len(two) == 6 and len(failures) == 1
        assert all(np.array_equal(a, b) for a, b in zip(one, two))


def test_jobs_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        data.tokenize_files([], object(), jobs=0, cache=False)


# ----------------------------------------------------------------------------- transposition

PITCH = re.compile(r"^(Pitch|NoteOn|NoteOff|Note_On|Note_Off|NOTE_ON|NOTE_OFF)_(\d+)$", re.I)


def pitch_of(token):
    match = PITCH.match(token)
    return int(match.group(2)) if match else None


def vocab_pitch_range(tok):
    pitches = [pitch_of(t) for t in tok.vocab if pitch_of(t) is not None]
    return min(pitches), max(pitches)


@needs_corpus
def test_transposition_shifts_every_pitch_token_by_one_k_and_nothing_else():
    path = small_corpus_files(3)[-1]
    for tok in tokenizers():
        ids = np.asarray(tok.encode(path).ids)
        before = [tok.id_to_token(int(i)) for i in ids]
        rng = np.random.default_rng(7)
        seen = set()
        for _ in range(30):
            after = [tok.id_to_token(int(i)) for i in data.augment_transpose(ids, tok, rng)]
            shifts = {pitch_of(a) - pitch_of(b) for a, b in zip(after, before) if pitch_of(b)}
            assert len(shifts) == 1 and -5 <= next(iter(shifts)) <= 5
            assert [a for a in after if pitch_of(a) is None] == [
                b for b in before if pitch_of(b) is None]
            seen |= shifts
        assert len(seen) >= 5  # the shift is really random


@needs_corpus
def test_transposition_keeps_pitches_in_range_at_the_top_of_the_range():
    path = small_corpus_files(3)[-1]
    for tok in tokenizers():
        ids = np.asarray(tok.encode(path).ids)
        top = max(pitch_of(tok.id_to_token(int(i))) or -1 for i in ids)
        lo, hi = vocab_pitch_range(tok)
        edge = np.asarray(tok.transpose(ids, hi - 2 - top))  # highest pitch now hi - 2
        rng = np.random.default_rng(0)
        for _ in range(40):
            out = data.augment_transpose(edge, tok, rng, low=-5, high=6)
            pitches = [pitch_of(tok.id_to_token(int(i))) for i in out]
            assert max(p for p in pitches if p is not None) <= hi
            assert min(p for p in pitches if p is not None) >= lo


def test_transposition_rejects_an_empty_range():
    with pytest.raises(ValueError, match="range"):
        data.augment_transpose([1, 2], None, np.random.default_rng(0), low=3, high=3)


# ----------------------------------------------------------------------------- windows


def numbered_sequences(lengths):
    """Sequence i holds 1000*(i+1) + 0, 1, 2 ...: every value tells its sequence and place."""
    return [np.arange(n, dtype=np.int32) + 1000 * (i + 1) for i, n in enumerate(lengths)]


def test_windows_are_contiguous_slices_with_shape_and_dtype():
    seqs = numbered_sequences([50, 300, 120])
    out = data.sample_windows(seqs, 64, 32, np.random.default_rng(1))
    assert out.shape == (64, 33) and out.dtype == np.int32
    assert np.all(np.diff(out, axis=1) == 1)  # consecutive tokens of one sequence
    for row in out:
        seq = seqs[row[0] // 1000 - 1]
        assert row[-1] <= seq[-1]


def test_windows_reach_the_first_and_last_position_of_a_sequence():
    seqs = numbered_sequences([40])
    starts = data.sample_windows(seqs, 2000, 9, np.random.default_rng(2))[:, 0] - 1000
    assert set(starts.tolist()) == set(range(0, 40 - 10 + 1))


def test_aligned_windows_start_only_on_multiples_and_reach_every_such_start():
    seqs = numbered_sequences([70])
    starts = data.sample_windows(seqs, 2000, 9, np.random.default_rng(2), align=8)[:, 0] - 1000
    assert set(starts.tolist()) == set(range(0, 70 - 10 + 1, 8))


def test_short_sequences_are_right_padded_with_pad_id():
    seqs = [np.array([5, 6, 7], dtype=np.int32)]
    out = data.sample_windows(seqs, 3, 6, np.random.default_rng(0), pad_id=0)
    np.testing.assert_array_equal(out, np.tile([5, 6, 7, 0, 0, 0, 0], (3, 1)))


def test_sequences_are_drawn_in_proportion_to_their_length():
    seqs = numbered_sequences([100, 900])
    out = data.sample_windows(seqs, 4000, 8, np.random.default_rng(3))
    share = np.mean(out[:, 0] >= 2000)
    assert abs(share - 0.9) < 4 * np.sqrt(0.9 * 0.1 / 4000)


def test_windows_depend_only_on_the_generator():
    seqs = numbered_sequences([80, 200])
    a = data.sample_windows(seqs, 8, 16, np.random.default_rng(5))
    b = data.sample_windows(seqs, 8, 16, np.random.default_rng(5))
    c = data.sample_windows(seqs, 8, 16, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampler_rejects_empty_input():
    with pytest.raises(ValueError):
        data.sample_windows([np.zeros(0, np.int32)], 2, 4, np.random.default_rng(0))


# ----------------------------------------------------------------------------- melodies


def bars_of(mid):
    """Bars spanned by the notes, from the first time signature (an independent count)."""
    ts = next(m for m in mid.tracks[0] if m.type == "time_signature")
    bar = mid.ticks_per_beat * 4 * ts.numerator // ts.denominator
    end = max(sum(m.time for m in t) for t in mid.tracks)
    return end / bar


def polyphony(mid):
    sounding, most = 0, 0
    for msg in mido.merge_tracks(mid.tracks):
        if msg.type == "note_on" and msg.velocity > 0:
            sounding += 1
        elif msg.type in ("note_off", "note_on"):
            sounding -= 1
        most = max(most, sounding)
    return most


def test_shipped_melodies_are_short_single_lines_in_several_metres():
    paths = data.shipped_melodies()
    assert 6 <= len(paths) <= 10
    catalogue = data.melody_catalogue()
    assert sorted(r["path"] for r in catalogue) == paths
    for path in paths:
        mid = mido.MidiFile(path)
        assert polyphony(mid) == 1, path.name
        assert 8 <= bars_of(mid) <= 33, path.name  # 8-32 bars plus a pickup
    assert len({r["metre"] for r in catalogue}) >= 3


@needs_corpus
def test_shipped_melodies_come_from_the_validation_split():
    by_file = {r["file"]: r for r in manifest()}
    for row in data.melody_catalogue():
        original = by_file[row["corpus_file"]]
        assert original["split"] == "validation"
        assert (DATA / original["file"]).read_bytes() == row["path"].read_bytes()
