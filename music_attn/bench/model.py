"""``music-attn bench model``: generation and training throughput against torch eager, and the evaluation.

For the shipped model's config and for a larger reference config (d_model 256,
4 layers, 4 heads, vocab 400), in one run:

- generation tokens/s with and without the KV cache (greedy, the model alone; with the
  cache, the decode step ``Model.decode`` that ``generate`` uses);
- per-token latency with the cache at position 10 and at position 1000, and the number
  of numpy calls one decode step makes (counted by weights that count their uses);
- two floors of that step on one core: its weight products alone (the same weights
  and shapes, nothing else) and as many numpy calls on 8-element arrays;
- ``generate`` tokens/s for one sample and for 16 samples at once (``num_samples``);
- training tokens/s (sequence 256, batch 16: forward, backward, AdamW step), and the
  FLOP/s it reaches as a share of a large matrix product's FLOP/s measured in the run;
- the same for the architecture in torch eager (:class:`music_attn.interop.torch_model.TorchTransformer`
  with our weights: torch's fused attention and its own KV cache)
  when torch is installed, after checking both give the same logits (1e-4).

Then, when the shipped model and the corpus (``data/``) are there, the
evaluation of :func:`music_attn.training.evaluate.evaluate_shipped`.
"""


import numpy as np

from music_attn._progress import progress
from music_attn._threads import single_threaded_blas
from music_attn.bench._timing import best_of
from music_attn.core.model import ModelConfig, init_model

__all__ = ["run"]

REFERENCE = dict(vocab_size=400, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=1024)


# ------------------------------------------------------------------ numpy side

def _np_generate(model, n, cached):
    ids = np.zeros((1, 1), dtype=np.int64)
    if cached:                             # the decode step, BLAS single-threaded, as generate runs it
        cache = model.new_cache()
        with single_threaded_blas():
            nxt = model.forward(ids, cache=cache)[:, -1].argmax(-1)
            for _ in range(n - 1):
                nxt = model.decode(nxt, cache).argmax(-1)
    else:
        for _ in range(n):
            nxt = model.forward(ids)[:, -1:].argmax(-1)
            ids = np.concatenate([ids, nxt], axis=1)


def _np_latency(model, position, repeats):
    rng = np.random.default_rng(0)
    cache = model.new_cache()
    model.forward(rng.integers(0, model.config.vocab_size, (1, position)), cache=cache)
    one = np.ones(1, dtype=np.int64)

    def step():
        model.decode(one, cache)
        cache.length = position          # rewind: the next call writes the same slot again
    with single_threaded_blas():
        step()
        return best_of(step, repeats)


class _Counted(np.ndarray):
    """An array that counts the numpy calls (ufuncs, reductions, array functions) made on it:
    each call the caller makes once, not the calls a numpy function makes inside it."""
    calls = 0
    _inside = 0                        # > 0 while a numpy function runs: its inner calls are its own

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _Counted.calls += _Counted._inside == 0
        inputs = tuple(x.view(np.ndarray) if isinstance(x, _Counted) else x for x in inputs)
        kwargs = {k: v.view(np.ndarray) if isinstance(v, _Counted) else v for k, v in kwargs.items()}
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, _Counted) else o for o in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:            # the buffer written, viewed so that its later uses count too
            result = out[0] if len(out) == 1 else out
        return result.view(_Counted) if isinstance(result, np.ndarray) else result

    def __array_function__(self, func, types, args, kwargs):
        _Counted.calls += _Counted._inside == 0
        _Counted._inside += 1
        try:
            return super().__array_function__(func, types, args, kwargs)
        finally:
            _Counted._inside -= 1


def _step_weights(model):
    """The weight matrices one decode step multiplies by, as the step itself holds them."""
    cache = model.new_cache()
    model.forward(np.ones((1, 10), dtype=np.int64), cache=cache)
    model.decode(np.ones(1, dtype=np.int64), cache)           # makes the step's weights
    weights = cache.work["decode"][1]
    return [w for b in weights.blocks for w in (b.qkv, b.o, b.ff1, b.ff2)] + [weights.head]


def _weight_products(mats, rows, repeats):
    """Seconds, on one core, of the products of ``rows`` rows by each matrix of ``mats``."""
    operands = [(np.ones((rows, w.shape[0]), w.dtype), np.empty((rows, w.shape[1]), w.dtype), w)
                for w in mats]

    def products():
        for x, o, w in operands:
            np.matmul(x, w, out=o)
    with single_threaded_blas():
        products()
        return best_of(products, repeats)


def _decode_floors(model, calls, repeats=200, rows=16):
    """What one decode step at position 10 cannot go below, on one core, in seconds:
    (its weight products alone, with the decode step's own weights; as many numpy
    calls as it makes, on 8-element arrays), the number and MiB of its weights, and
    the weight products alone of a step of ``rows`` sequences at once."""
    mats = _step_weights(model)
    tiny, out = np.ones(8, np.float32), np.empty(8, np.float32)

    def numpy_calls():
        for _ in range(int(round(calls))):
            np.multiply(tiny, tiny, out=out)
    numpy_calls()
    return (_weight_products(mats, 1, repeats), best_of(numpy_calls, repeats),
            len(mats), sum(w.nbytes for w in mats) / 2 ** 20, _weight_products(mats, rows, repeats))


def _numpy_calls_per_token(model, n=16):
    """numpy calls of one decode step: the model's weights are made to count their uses."""
    from music_attn.core.model import Model

    counted = Model(model.config, {k: v.view(_Counted) for k, v in model.params.items()})
    cache = counted.new_cache()
    counted.forward(np.zeros((1, 8), dtype=np.int64), cache=cache)
    one = np.ones(1, dtype=np.int64)
    counted.decode(one, cache)          # the first step also sets up the cache's scratch
    _Counted.calls = 0
    for _ in range(n):
        counted.decode(one, cache)
    return _Counted.calls / n


def _np_batch_generate(model, n_samples, n_tokens):
    """Tokens/s of ``generate`` sampling ``n_samples`` continuations at once (EOS forbidden)."""
    from music_attn.runtime.generate import generate

    def run():
        generate(model, [1], max_new_tokens=n_tokens, num_samples=n_samples, no_end=True,
                 constrained=model.tokenizer is not None, rng=np.random.default_rng(0))
    run()
    return n_samples * n_tokens / best_of(run, 2)


def _np_train_step_fn(model, batch, seq):
    from music_attn.training.train import AdamW

    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (batch, seq + 1))
    opt = AdamW(model.params)

    def step():
        _, grads = model.loss_and_grads(ids[:, :-1], ids[:, 1:])
        opt.step(model.params, grads, 1e-4)
    return step


def _train_flops_per_token(config, seq):
    """Matrix-product FLOPs of one training token (forward + backward = 3 x forward):
    2 per weight of every linear map and 2 x 2 x (seq / 2) x C per layer for the causal
    scores and weighted sum, and 2 x (seq / 2) x C more for relative logits ``q E^T``
    (the causal half of each product: the work a causal kernel must do)."""
    C, F, V = config.d_model, config.d_ff, config.vocab_size
    weights = config.n_layers * (3 * C * C + C * C + 2 * C * F) + C * V
    products = 3 if config.positional == "relative" else 2
    attention = config.n_layers * products * 2 * (seq / 2) * C
    return 3 * (2 * weights + attention)


def _matmul_peak(threads_note=""):
    """FLOP/s of a large float32 matrix product (1024^3), best of 3: the machine's peak here."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1024, 1024), dtype=np.float32) for _ in range(2))
    a @ b
    return 2 * 1024 ** 3 / best_of(lambda: a @ b, 3)


# ------------------------------------------------------------------ torch side

def _torch_side(model):
    import torch

    from music_attn.interop.torch_bridge import to_torch

    torch.set_num_threads(2)
    ref = to_torch(model).requires_grad_(False)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 64))
    diff = check_logits(model, ref, ids)
    return torch, ref, diff


def check_logits(model, module, ids, atol=1e-4):
    """Assert our logits and the torch module's agree on ``ids`` (B, T); the largest difference."""
    import torch

    ours = model.forward(ids)
    with torch.no_grad():
        theirs = module(torch.as_tensor(ids, dtype=torch.int64)).numpy()
    diff = float(np.abs(ours - theirs).max())
    if not diff <= atol:
        raise AssertionError(f"numpy and torch logits differ by {diff:.2e} (> {atol:g})")
    return diff


def _torch_generate(torch, ref, n, cached):
    with torch.no_grad():
        ids = torch.zeros((1, 1), dtype=torch.int64)
        if cached:
            cache, nxt = ref.new_cache(), ids
            for _ in range(n):
                nxt = ref(nxt, cache=cache)[:, -1:].argmax(-1)
        else:
            for _ in range(n):
                nxt = ref(ids)[:, -1:].argmax(-1)
                ids = torch.cat([ids, nxt], dim=1)


def _torch_latency(torch, ref, position, repeats):
    with torch.no_grad():
        cache = ref.new_cache()
        ref(torch.randint(0, ref.config.vocab_size, (1, position)), cache=cache)
        saved = {k: list(cache[k]) for k in ("k", "v")}
        one = torch.ones((1, 1), dtype=torch.int64)

        def step():
            ref(one, cache=cache)
            cache["len"], cache["k"], cache["v"] = position, list(saved["k"]), list(saved["v"])
        return best_of(step, repeats)


def _torch_train_step_fn(torch, model, batch, seq):
    from music_attn.interop.torch_bridge import to_torch

    ref = to_torch(model)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
    V = model.config.vocab_size

    def step():
        opt.zero_grad(set_to_none=True)
        logits = ref(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
        opt.step()
    return step


# ------------------------------------------------------------------ table

def _measure(name, model, quick):
    n_gen, n_nocache = (64, 16) if quick else (256, 64)
    batch, seq = (4, 128) if quick else (16, 256)
    reps = 2 if quick else 3
    far = min(1000, model.config.max_len - 1)
    row = {"config": name, "params": model.n_params, "far": far}
    row["np_gen"] = n_gen / best_of(lambda: _np_generate(model, n_gen, True), reps)
    row["np_gen_nocache"] = n_nocache / best_of(lambda: _np_generate(model, n_nocache, False), 1)
    row["np_lat10"] = _np_latency(model, 10, 50)
    row["np_latfar"] = _np_latency(model, far, 50)
    row["calls"] = _numpy_calls_per_token(model)
    row["floors"] = _decode_floors(model, row["calls"])
    n_batch = 32 if quick else 64
    row["batch1"] = _np_batch_generate(model, 1, n_batch)
    row["batch16"] = _np_batch_generate(model, 16, n_batch)
    step = _np_train_step_fn(model.astype(np.float32), batch, seq)
    step()
    row["np_train"] = batch * seq / best_of(step, reps)
    row["train_flops"] = row["np_train"] * _train_flops_per_token(model.config, seq)
    row["peak"] = _matmul_peak()
    try:
        torch, ref, row["logit_diff"] = _torch_side(model)
    except ImportError:
        return row
    row["t_gen"] = n_gen / best_of(lambda: _torch_generate(torch, ref, n_gen, True), reps)
    row["t_gen_nocache"] = n_nocache / best_of(lambda: _torch_generate(torch, ref, n_nocache, False), 1)
    row["t_lat10"] = _torch_latency(torch, ref, 10, 50)
    row["t_latfar"] = _torch_latency(torch, ref, far, 50)
    tstep = _torch_train_step_fn(torch, model, batch, seq)
    tstep()
    row["t_train"] = batch * seq / best_of(tstep, reps)
    return row


def _print_rows(rows):
    def fmt(row, key, spec):
        return format(row[key], spec) if key in row else "-"

    print(f"{'config':<22} {'':>10} {'gen tok/s':>10} {'no cache':>9} {'lat@10 ms':>10} "
          f"{'lat@far ms':>11} {'far/10':>7} {'train tok/s':>12}")
    for row in rows:
        for side, label in (("np", "numpy"), ("t", "torch eager")):
            if f"{side}_gen" not in row:
                continue
            lat10, latfar = row[f"{side}_lat10"] * 1e3, row[f"{side}_latfar"] * 1e3
            print(f"{row['config']:<22} {label:>10} {row[f'{side}_gen']:>10.0f} "
                  f"{row[f'{side}_gen_nocache']:>9.1f} {lat10:>10.3f} {latfar:>11.3f} "
                  f"{latfar / lat10:>7.2f} {row[f'{side}_train']:>12.0f}")
        if "t_gen" in row:
            print(f"{'':<22} {'ratio':>10} {row['np_gen'] / row['t_gen']:>9.2f}x "
                  f"{row['np_gen_nocache'] / row['t_gen_nocache']:>8.2f}x "
                  f"{row['t_lat10'] / row['np_lat10']:>9.2f}x {'':>11} {'':>7} "
                  f"{row['np_train'] / row['t_train']:>11.2f}x   (numpy/torch speed; logits agree to "
                  f"{fmt(row, 'logit_diff', '.1e')})")
        print(f"{'':<22} {'':>10} numpy calls per decoded token: {row['calls']:.0f}; "
              f"generate() tokens/s: 1 sample {row['batch1']:.0f}, 16 samples {row['batch16']:.0f} "
              f"({row['batch16'] / row['batch1']:.1f}x)")
        prod, calls, n_mats, mib, prod16 = row["floors"]
        print(f"{'':<22} {'':>10} decode step floors, one core: its {n_mats} weight products alone "
              f"{prod * 1e3:.3f} ms ({mib:.1f} MiB), {row['calls']:.0f} numpy calls on tiny arrays alone "
              f"{calls * 1e3:.3f} ms")
        print(f"{'':<22} {'':>10} a step of 16 samples: its weight products alone {prod16 * 1e3:.3f} ms, "
              f"so at most {16 / prod16:.0f} tokens/s = {16 / prod16 / row['batch1']:.1f}x one sample")
        print(f"{'':<22} {'':>10} training: {row['train_flops'] / 1e9:.1f} GFLOP/s = "
              f"{row['train_flops'] / row['peak']:.0%} of the 1024^3 float32 matmul peak "
              f"measured now ({row['peak'] / 1e9:.1f} GFLOP/s)")
    print("targets: generation with cache >= 2.5x torch; shipped lat@10 <= 0.25 ms; lat@1000 <= 1.5x "
          "lat@10; 16 samples >= 8x one; training >= 1.0x torch and >= 60% of the matmul peak")


def run(quick=False):
    """Print the throughput table, then the evaluation when the shipped model and data/ exist."""
    from music_attn.runtime.checkpoint import load_model
    from music_attn.errors import CheckpointError

    configs = []
    try:
        shipped = load_model()
        configs.append(("shipped " + shipped.config.positional, shipped))
    except (CheckpointError, FileNotFoundError):
        shipped = None
        print("(no shipped model in this install: benchmarking the reference config only)")
    ref_cfg = ModelConfig(**REFERENCE)
    configs.append(("d256 L4 H4 V400", init_model(ref_cfg, np.random.default_rng(0))))
    rows = []
    with progress(len(configs), "bench model", unit="config") as bar:          # stderr
        for name, model in configs:
            bar.update(0, f"measuring {name}")
            rows.append(_measure(name, model, quick))
            bar.update(1, f"measured {name}")
    print("Generation and training throughput (2 threads each; best of repeats)")
    _print_rows(rows)
    if shipped is not None:
        from music_attn.training.evaluate import evaluate_shipped

        print()
        evaluate_shipped(shipped, quick=quick)
