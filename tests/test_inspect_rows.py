"""The vectorised row work under inspect (top-k rows, row lists, head roles, JSON notes) against
plain loops in float64 written here, on random data with ties, empty rows and short rows."""

import gc
import math
import types

import numpy as np
import pytest

from music_attn.inspect import bands, roles, viz
from music_attn.inspect.inspector import AttentionMaps


def _random_csr(rng, n_rows, max_len, *, levels=None, empty=0.2):
    """indptr (R + 1,), keys (E,) increasing in each row, float32 weights (E,) in [0, 1].

    ``levels``: weights drawn from that many equal steps (many exact ties), else uniform."""
    lengths = rng.integers(0, max_len + 1, n_rows)
    lengths[rng.random(n_rows) < empty] = 0
    indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    keys = np.concatenate([np.sort(rng.choice(max(n_rows, max_len), n, replace=False)) for n in lengths]
                          + [np.zeros(0, np.int64)]).astype(np.int32)
    if levels:
        weights = rng.integers(1, levels + 1, indptr[-1]) / levels
    else:
        weights = rng.random(indptr[-1])
    return indptr, keys, weights.astype(np.float32)


def _loop_top_k(key, indptr, k):
    """Each row's entries by (key, position), its first k: a plain loop."""
    out = []
    for i in range(len(indptr) - 1):
        entries = list(range(int(indptr[i]), int(indptr[i + 1])))
        out += sorted(entries, key=lambda j: (float(key[j]), j))[:k]
    return np.array(out, dtype=np.int64)


CASES = [  # rows, longest row, weight levels (None: uniform), k
    (50, 30, None, 8), (50, 30, 4, 8), (40, 12, 2, 4), (30, 5, 3, 8), (60, 40, 1, 3),
    (1, 10, 5, 1), (25, 20, 6, 0), (0, 0, None, 8), (20, 0, None, 4), (300, 9, 3, 8),
]


@pytest.mark.parametrize("n_rows, max_len, levels, k", CASES)
def test_top_k_entries_equal_a_loop_over_rows(n_rows, max_len, levels, k):
    rng = np.random.default_rng(n_rows * 31 + max_len + k)
    indptr, _, weights = _random_csr(rng, n_rows, max_len, levels=levels)
    row = np.repeat(np.arange(n_rows), np.diff(indptr))
    for x in (0.5 * (1.0 - weights),                                               # AttentionMaps.top_keys
              0.5 * (1 - np.clip(weights.astype(np.float64), 0, 1))):              # the page's maps
        np.testing.assert_array_equal(bands._top_k_entries(x, indptr, k), _loop_top_k(row + x, indptr, k))


def test_top_k_entries_with_keys_outside_their_rows_and_rows_of_very_different_lengths():
    rng = np.random.default_rng(5)
    indptr, _, weights = _random_csr(rng, 40, 20, levels=3)
    row = np.repeat(np.arange(40), np.diff(indptr))
    w = weights.astype(np.float64)
    w[::7] = 1.6                                        # weights above 1: x below -0.25
    x = 0.5 * (1.0 - w)
    np.testing.assert_array_equal(bands._top_k_entries(x, indptr, 4), _loop_top_k(row + x, indptr, 4))
    indptr = np.array([0, 200, 201, 202, 203, 203], np.int64)   # one long row: padding would be mostly empty
    row = np.repeat(np.arange(5), np.diff(indptr))
    x = 0.5 * (1.0 - rng.integers(0, 4, 203) / 4)
    np.testing.assert_array_equal(bands._top_k_entries(x, indptr, 3), _loop_top_k(row + x, indptr, 3))
    x = np.array([0.1, 1e-17, 2e-17, 0.0, 0.3, 0.2])    # in row 1, 1 + 2e-17 rounds to 1 + 0.0: a tie
    indptr = np.array([0, 2, 6], np.int64)
    np.testing.assert_array_equal(bands._top_k_entries(x, indptr, 2), [1, 0, 2, 3])
    np.testing.assert_array_equal(bands._top_k_entries(x, indptr, 1), [1, 2])


def _maps_of_rows(heads_rows, n_notes):
    """AttentionMaps whose heads are the given CSR rows (one layer)."""
    zeros = np.zeros(n_notes)
    heads = [bands._Head(bands.NoteRows(*r), zeros, zeros) for r in heads_rows]
    notes = {"pitch": np.full(n_notes, 60), "start": np.arange(n_notes, dtype=float), "end": np.arange(n_notes) + 0.5}
    return AttentionMaps(tokens=[], ids=np.zeros(0, np.int64), note_of_token=np.zeros(0, np.int64), token_band=None,
                         band_back=0, rollout_band=None, heads=[heads], rollout=None, note_names=[""] * n_notes,
                         **{k: np.asarray(v) for k, v in notes.items()})


@pytest.mark.parametrize("levels, k", [(None, 8), (4, 8), (2, 3), (5, 40)])
def test_top_keys_equal_a_float64_loop(levels, k):
    rng = np.random.default_rng(k)
    indptr, keys, weights = _random_csr(rng, 80, 30, levels=levels)
    maps = _maps_of_rows([(indptr, keys, weights)], 80)
    got_ptr, got_keys, got_w, rest = maps.top_keys(0, 0, k)
    want_keys, want_w, want_rest, want_ptr = [], [], [], [0]
    for i in range(80):
        entries = [(-float(weights[j]), j) for j in range(indptr[i], indptr[i + 1])]
        entries.sort()
        kept = [j for _, j in entries[:k]]
        want_keys += [int(keys[j]) for j in kept]
        want_w += [float(weights[j]) for j in kept]
        want_rest.append(sum(float(weights[j]) for _, j in entries[k:]))
        want_ptr.append(want_ptr[-1] + len(kept))
    np.testing.assert_array_equal(got_ptr, want_ptr)
    np.testing.assert_array_equal(got_keys, want_keys)
    np.testing.assert_array_equal(got_w, np.array(want_w, np.float32))
    np.testing.assert_allclose(rest, want_rest, atol=1e-6)


@pytest.mark.parametrize("levels, k", [(None, 4), (3, 4), (255, 8), (2, 64)])
def test_page_top_k_rows_equal_a_float64_loop(levels, k):
    rng = np.random.default_rng(levels or 1)
    indptr, keys, weights = _random_csr(rng, 70, 25, levels=levels)
    weights[::11] = 0.001                               # quantized to 0: left out
    counts, got_keys, q = viz._top_k_csr(indptr, keys, weights, 70, k)
    want_counts, want_keys, want_q = [], [], []
    for i in range(70):
        entries = sorted((-min(max(float(weights[j]), 0.0), 1.0), j) for j in range(indptr[i], indptr[i + 1]))[:k]
        kept = [(j, int(np.clip(np.rint(float(weights[j]) * 255), 0, 255))) for _, j in entries]
        kept = [(j, v) for j, v in kept if v > 0]
        want_counts.append(len(kept))
        want_keys += [int(keys[j]) for j, _ in kept]
        want_q += [v for _, v in kept]
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(got_keys, want_keys)
    np.testing.assert_array_equal(q, want_q)


@pytest.mark.parametrize("levels", [None, 7])
def test_rows_as_lists_equal_slices(levels):
    rng = np.random.default_rng(3)
    for n_rows, max_len in [(40, 8), (10, 1), (0, 0), (15, 0), (5, 60)]:
        indptr, keys, weights = _random_csr(rng, n_rows, max_len, levels=levels)
        cut = lambda values: [list(values[indptr[i]:indptr[i + 1]]) for i in range(n_rows)]   # noqa: E731
        assert bands._split_rows(keys, indptr) == cut([int(x) for x in keys])
        w = weights.astype(np.float64)
        w[::5] = np.nan
        assert bands._split_floats(w, indptr, 3) == cut([None if math.isnan(x) else float(np.round(x, 3)) for x in w])


def _loop_roles(heads_rows, notes, N, structure_share, structure_uniform):
    """Shares and uniform baselines head by head with sets of pairs: the rule of `roles.head_roles`."""
    prev = roles.previous_in_voice(notes["start"], notes["pitch"], notes["track"])
    names = roles.NOTE_RELATIONS
    share = np.zeros((1, len(heads_rows), len(roles.RELATIONS)))
    pairs = set()
    for h, (indptr, keys, weights) in enumerate(heads_rows):
        qi = np.repeat(np.arange(N), np.diff(indptr))
        masks = roles.relation_masks(qi, keys, notes, prev)
        for r, name in enumerate(names):
            share[0, h, r] = math.fsum(float(w) for w, m in zip(weights, masks[name]) if m) / N
        pairs |= {(int(i), int(j)) for i, j in zip(qi, keys)}
    share[..., -1] = np.asarray(structure_share, np.float64).mean(-1)
    pairs = sorted(pairs)
    qi, kj = np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)
    masks = roles.relation_masks(qi, kj, notes, prev)
    visible = np.maximum(np.bincount(qi, minlength=N), 1)
    uniform = [np.mean([sum(1 for i, m in zip(qi, masks[name]) if m and i == n) / visible[n] for n in range(N)])
               for name in names] + [float(np.mean(structure_uniform))]
    return share, np.array(uniform)


@pytest.mark.parametrize("same_keys", [True, False])
def test_head_roles_equal_a_loop_over_heads(same_keys):
    rng = np.random.default_rng(11)
    N, H = 60, 4
    notes = {"pitch": rng.integers(55, 75, N), "start": np.sort(rng.integers(0, 30, N) * 0.5),
             "bar": None, "position": None, "track": rng.integers(0, 3, N)}
    notes["bar"], notes["position"] = (notes["start"] // 2).astype(int), notes["start"] % 2
    notes["melody"] = roles.melody_track_notes(notes["pitch"], notes["track"])
    base = _random_csr(rng, N, 12, levels=5, empty=0.1)
    heads = []
    for h in range(H):
        indptr, keys, weights = base if same_keys or h % 2 == 0 else _random_csr(rng, N, 12, empty=0.1)
        heads.append((indptr, keys, rng.random(keys.size).astype(np.float32) if h else weights))
    structure = rng.random((1, H, N))
    uniform_structure = rng.random(N)
    got = roles.head_roles(lambda layer, head: heads[head], 1, H, notes, structure, uniform_structure)
    share, uniform = _loop_roles(heads, notes, N, structure, uniform_structure)
    np.testing.assert_allclose(got["share"], share, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got["uniform"], uniform, rtol=1e-12, atol=1e-15)


def test_union_of_sorted_pairs_equals_a_set_union():
    rng = np.random.default_rng(2)
    seen = None
    everything = set()
    for size in (0, 50, 50, 3, 200, 0):
        code = rng.integers(0, 300, size)
        everything |= set(code.tolist())
        seen = roles._union(seen, code)
        np.testing.assert_array_equal(seen, sorted(everything))


def test_json_notes_equal_a_loop_over_notes():
    rng = np.random.default_rng(4)
    N = 30
    start = rng.random(N) * 10
    start[3] = np.nan
    surprise = rng.random(N) * 5
    surprise[[0, 7]] = [np.inf, np.nan]
    for bar, beat in [(rng.integers(1, 9, N), rng.random(N) * 4 + 1), (None, None)]:
        maps = types.SimpleNamespace(n_notes=N, pitch=rng.integers(0, 128, N), note_names=[f"n{i}" for i in range(N)],
                                     start=start, end=start + 0.1234567, bar=bar, beat=beat,
                                     track=rng.integers(0, 4, N), drum=rng.random(N) < 0.3,
                                     velocity=rng.integers(1, 128, N), surprise=surprise)
        num = lambda x: None if not math.isfinite(float(x)) else round(float(x), 3)     # noqa: E731
        want = [{"pitch": int(maps.pitch[i]), "name": maps.note_names[i], "start": num(start[i]), "end": num(maps.end[i]),
                 "bar": None if bar is None else int(bar[i]), "beat": None if beat is None else num(beat[i]),
                 "track": int(maps.track[i]), "drum": bool(maps.drum[i]), "velocity": int(maps.velocity[i]),
                 "surprise": num(surprise[i])} for i in range(N)]
        got = viz._note_dicts(maps, 3)
        assert got == want
        assert [list(d) for d in got] == [list(d) for d in want]                           # same key order


def test_gc_paused_restores_the_collector():
    was = gc.isenabled()
    try:
        gc.enable()
        with bands._gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()
        with bands._gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


def _loop_band_to_notes(band, back, key_labels, n_notes):
    """Note rows, structure and context shares of one head (T, W) by a loop over every band entry."""
    T, W = band.shape
    P = key_labels.size - T
    pairs, structure, context = {}, np.zeros(n_notes), np.zeros(n_notes)
    counts = np.bincount(key_labels[P:][key_labels[P:] >= 0], minlength=n_notes)
    for t in range(T):
        i = int(key_labels[P + t])
        if i < 0:
            continue
        for j in range(W):
            s = P + t - back + j
            if not 0 <= s < key_labels.size:
                continue
            label, w = int(key_labels[s]), float(band[t, j])
            if label >= 0:
                pairs.setdefault((i, label), []).append(w)
            elif label == -1:
                structure[i] += w
            else:
                context[i] += w
    rows = sorted((i, j, math.fsum(ws) / counts[i]) for (i, j), ws in pairs.items() if math.fsum(ws) != 0)
    return rows, structure / np.maximum(counts, 1), context / np.maximum(counts, 1)


@pytest.mark.parametrize("chunk, dense_block, back", [(2048, 4_000_000, 15), (7, 4_000_000, 15), (5, 10, 15), (9, 4_000_000, 6)])
def test_band_to_notes_equals_a_loop_over_the_band(monkeypatch, chunk, dense_block, back):
    monkeypatch.setattr(bands, "_CHUNK_TOKENS", chunk)
    monkeypatch.setattr(bands, "_DENSE_BLOCK", dense_block)
    rng = np.random.default_rng(chunk + back)
    n_notes, T, W, P = 14, 70, 16, 6
    labels = rng.integers(0, n_notes, T)                                 # notes' tokens interleave
    labels[rng.random(T) < 0.25] = -1                                    # structure tokens
    labels[-1], labels[3] = n_notes - 1, 0
    key_labels = np.concatenate((rng.choice([-1, -2], P), labels))       # context before the passage
    heads = rng.random((4, T, W)).astype(np.float32) + 0.01                # heads 2, 3: every pair > 0
    heads[0][rng.random((T, W)) < 0.3] = 0                               # some pairs sum to zero
    heads[1] *= rng.random((T, W)) < 0.5
    rollout = rng.random((1, T, W)).astype(np.float32)
    got = bands.band_to_notes([heads, rollout], back, key_labels, n_notes)
    assert len(got) == 5
    for head, band in zip(got, list(heads) + [rollout[0]]):
        rows, structure, context = _loop_band_to_notes(band, back, key_labels, n_notes)
        stored = [(i, int(k), float(w)) for i in range(n_notes)
                  for k, w in zip(head.rows.keys[head.rows.indptr[i]:head.rows.indptr[i + 1]],
                                  head.rows.weights[head.rows.indptr[i]:head.rows.indptr[i + 1]])]
        assert [(i, k) for i, k, _ in stored] == [(i, k) for i, k, _ in rows]
        np.testing.assert_allclose([w for *_, w in stored], [w for *_, w in rows], rtol=1e-6)
        np.testing.assert_allclose(head.structure, structure, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(head.context, context, rtol=1e-12, atol=1e-15)
    alone = bands.band_to_notes(heads, back, key_labels, n_notes)        # one stack: the same heads
    for a, b in zip(alone, got):
        for x, y in zip(a.rows + (a.structure, a.context), b.rows + (b.structure, b.context)):
            np.testing.assert_array_equal(x, y)


def test_page_floats_equal_a_loop():
    values = [np.array([0.12345, -2.5, np.nan, np.inf, 1e-9, 3]), np.array([1, 2], np.int64),
              np.array([0.1, 0.7], np.float32), np.zeros(0)]
    for a in values:
        want = [None if not np.isfinite(x) else round(float(x), 2) for x in a]
        assert viz._floats(a, 2) == want


def test_float_texts_equal_repr_of_numpy_rounding():
    rng = np.random.default_rng(8)
    values = np.concatenate((rng.random(20000), rng.random(2000) * 1e-3, np.arange(0, 1.0005, 0.0005),
                             [0.0, -0.0, -1e-5, -0.3, 1.0, 1.0004, 1.0006, 7.25, 1e20, np.nan, np.inf, -np.inf]))
    for decimals in (0, 1, 2, 3, 4):
        rounded = np.round(values, decimals)
        want = ["null" if not np.isfinite(y) else repr(float(y)) for y in rounded]
        assert viz._float_texts(values, decimals).tolist() == want
    assert viz._float_texts(np.float32([0.1234, 0.5]), 3).tolist() == ["0.123", "0.5"]


@pytest.mark.parametrize("n_rows, max_len", [(30, 6), (5, 0), (0, 0), (12, 1)])
def test_rows_json_equals_json_dumps(n_rows, max_len):
    import json
    rng = np.random.default_rng(n_rows)
    indptr, keys, _ = _random_csr(rng, n_rows, max_len)
    texts = np.array([str(k) for k in keys], dtype=object)
    rows = [keys[indptr[i]:indptr[i + 1]].tolist() for i in range(n_rows)]
    assert viz._rows_json(texts, indptr) == json.dumps(rows, separators=(",", ":"))


@pytest.mark.parametrize("decimals, with_rollout", [(3, True), (2, False), (6, True)])
def test_to_json_equals_json_dumps_of_to_dict(decimals, with_rollout):
    import json
    rng = np.random.default_rng(decimals)
    N, T = 40, 120
    labels = np.sort(rng.integers(0, N, T))
    labels[rng.random(T) < 0.2] = -1
    labels[:N] = np.arange(N)                     # every note has a token
    labels = np.sort(labels)
    att = rng.random((2, 2, T, T)) ** 6
    att[..., np.triu(np.ones((T, T), bool), 1)] = 0
    att /= att.sum(-1, keepdims=True)
    notes = {"pitch": rng.integers(40, 90, N), "start": np.arange(N) * 0.25, "end": np.arange(N) * 0.25 + 0.2,
             "bar": np.arange(N) // 4 + 1, "beat": np.arange(N) % 4 + 1.0}
    maps = AttentionMaps.from_arrays(att if with_rollout else None, labels, notes,
                                     band=None if with_rollout else att, band_back=None if with_rollout else T - 1,
                                     token_nll=np.r_[np.nan, rng.random(T - 1) * 3], name="x.mid",
                                     texts={"tracks": ["a \"note_attention\":null"], "lyrics": ""})
    maps.heads[1][0].rows.weights[::5] = 0.0      # weights that round to 0 and exact zeros
    maps.heads[0][1].rows.weights[3] = 1.0007     # past 1
    for k in (1, 3, 8, 200):
        want = json.dumps(maps.to_dict(top_k=k, decimals=decimals), separators=(",", ":"), allow_nan=False)
        assert maps.to_json(top_k=k, decimals=decimals) == want
    want = json.dumps(maps.to_dict(token_band=True, decimals=decimals), separators=(",", ":"), allow_nan=False)
    assert maps.to_json(token_band=True, decimals=decimals) == want


@pytest.mark.parametrize("lead, T, W, n, offset, r0, r1, src_first", [
    ((2, 3), 40, 8, 8, 5, 3, 8, 0), ((), 30, 16, 12, 0, 0, 12, 0), ((4,), 50, 16, 16, 20, 6, 16, 6),
    ((), 9, 4, 4, 5, 0, 4, 0), ((1, 1), 20, 8, 5, 15, 4, 5, 2)])
def test_put_rows_equals_a_loop_over_rows(lead, T, W, n, offset, r0, r1, src_first):
    from music_attn.inspect.windows_read import _put_rows
    rng = np.random.default_rng(r0 + T)
    src = rng.random(lead + (n - src_first, n)).astype(np.float32)
    dst = rng.random(lead + (T, W)).astype(np.float32)           # what is there must stay where unwritten
    want = dst.copy()
    for r in range(r0, r1):                                       # the rule, written as it reads
        for k in range(r + 1):
            want[..., offset + r, W - 1 - r + k] = src[..., r - src_first, k]
    _put_rows(dst, src, np.arange(r0, r1), offset, W, src_first=src_first)
    np.testing.assert_array_equal(dst, want)
