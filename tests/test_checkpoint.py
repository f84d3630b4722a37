"""Checkpoints: exact round trips, no pickles, and clear errors for anything else."""

import json
import zipfile

import numpy as np
import pytest

from music_attn.runtime import checkpoint
from music_attn.runtime.checkpoint import load_checkpoint, load_model, save_checkpoint
from music_attn.errors import CheckpointError
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import RemiTokenizer


@pytest.fixture
def model():
    tokenizer = RemiTokenizer()
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                         max_len=24, positional="relative", attention="soft_align", window=4)
    return init_model(config, np.random.default_rng(0), tokenizer=tokenizer)


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "model.npz"
    save_checkpoint(path, model)
    return path


def rewrite(path, **changes):
    """Copy a checkpoint with some entries replaced (None deletes)."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            entries.pop(key)
        else:
            entries[key] = value
    np.savez(path, **entries)


def test_round_trip_gives_identical_weights_config_and_tokenizer(model, saved):
    loaded = load_checkpoint(saved)
    assert loaded.train_state is None
    assert loaded.model.config == model.config
    assert loaded.model.tokenizer == model.tokenizer
    assert loaded.model.tokenizer.vocab == model.tokenizer.vocab
    assert set(loaded.model.params) == set(model.params)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.model.params[name], value)
        assert loaded.model.params[name].dtype == value.dtype
    ids = np.array([[1, 3, 5, 7]])
    np.testing.assert_array_equal(loaded.model.forward(ids), model.forward(ids))


def test_file_holds_only_plain_arrays_and_json(saved):
    with np.load(saved, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    assert not any(v.dtype == object for v in entries.values())
    assert json.loads(str(entries["model_config"][()]))["positional"] == "relative"
    assert json.loads(str(entries["tokenizer"][()]))["type"] == "remi"
    assert json.loads(str(entries["vocab"][()]))[:3] == ["PAD", "BOS", "EOS"]


def test_training_state_round_trips(model, tmp_path):
    path = tmp_path / "train.npz"
    arrays = {"m/tok_emb": np.arange(6.0).reshape(2, 3)}
    meta = {"step": 17, "rng": {"state": 2 ** 100 + 1}, "history": [{"loss": 1.5}]}
    save_checkpoint(path, model, train_state={"meta": meta, "arrays": arrays})
    state = load_checkpoint(path).train_state
    assert state["meta"] == meta
    np.testing.assert_array_equal(state["arrays"]["m/tok_emb"], arrays["m/tok_emb"])


def test_model_without_tokenizer_round_trips(tmp_path):
    config = ModelConfig(vocab_size=9, d_model=8, n_layers=1, n_heads=2, d_ff=8, max_len=8)
    path = tmp_path / "bare.npz"
    save_checkpoint(path, init_model(config, np.random.default_rng(0)))
    loaded = load_checkpoint(path).model
    assert loaded.tokenizer is None and loaded.config == config


def test_truncated_file_is_a_checkpoint_error_naming_the_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.npz"):
        load_checkpoint(saved)


def test_file_that_is_not_a_zip_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="noise.npz"):
        load_checkpoint(path)


def test_foreign_npz_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="foreign.npz.*not a music_attn checkpoint"):
        load_checkpoint(path)


def test_pickled_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, format=np.array([{"format": "music_attn.checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled.npz"):
        load_checkpoint(path)


def test_config_that_does_not_match_the_weights_is_a_checkpoint_error(model, saved):
    config = {**model.config.to_dict(), "d_model": 32}
    rewrite(saved, model_config=np.array(json.dumps(config)))
    with pytest.raises(CheckpointError, match="model.npz.*do not match"):
        load_checkpoint(saved)


def test_missing_parameter_is_a_checkpoint_error(saved):
    rewrite(saved, **{"param/h1.ff.w2": None})
    with pytest.raises(CheckpointError, match="h1.ff.w2"):
        load_checkpoint(saved)


def test_vocabulary_that_differs_from_the_tokenizer_is_a_checkpoint_error(model, saved):
    vocab = list(model.tokenizer.vocab)
    vocab[10], vocab[11] = vocab[11], vocab[10]
    rewrite(saved, vocab=np.array(json.dumps(vocab)))
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_checkpoint(saved)


def test_newer_format_version_is_refused(saved):
    rewrite(saved, format=np.array(json.dumps({"format": "music_attn.checkpoint", "version": 99})))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(saved)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.npz")


def test_failed_save_leaves_the_previous_checkpoint_intact(model, saved, monkeypatch):
    before = saved.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, model)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["model.npz"]
    assert zipfile.is_zipfile(saved)


def test_load_model_none_reads_the_packaged_model(saved, monkeypatch):
    monkeypatch.setattr(checkpoint, "shipped_model_path", lambda: saved)
    loaded = load_model()
    assert loaded.tokenizer is not None and loaded.config.d_model == 16


def test_missing_packaged_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "shipped_model_path", lambda: tmp_path / "model.npz")
    with pytest.raises(CheckpointError, match="pretrained model is missing"):
        load_model()


def test_shipped_model_loads_with_its_tokenizer():
    path = checkpoint.shipped_model_path()
    if not path.is_file():
        pytest.skip("the pretrained model has not been built yet")
    model = load_model()
    assert model.tokenizer is not None
    assert model.tokenizer.vocab_size == model.config.vocab_size
    assert path.stat().st_size < 25 * 2 ** 20


# ---------------------------------------------------------------- hostile files
def _npy_header(dtype, shape):
    """The bytes of an .npy header (version 1.0) declaring ``dtype`` and ``shape``."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _replace_member(path, key, payload):
    """Rewrite the archive with member ``key``.npy replaced by raw ``payload`` bytes (deflated)."""
    with zipfile.ZipFile(path) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    members[f"{key}.npy"] = payload
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in members.items():
            dst.writestr(name, data)


@pytest.fixture
def no_data_reads(monkeypatch):
    """Fail the test if any array's data (not just its header) is read; JSON entries may be."""
    real = checkpoint._read

    def guarded(archive, entry, path):
        if entry.info.filename.startswith(("param/", "train/")):
            raise AssertionError(f"{entry.info.filename} was read before the headers were checked")
        return real(archive, entry, path)
    monkeypatch.setattr(checkpoint, "_read", guarded)


def test_a_plain_npy_file_is_a_checkpoint_error_naming_it(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.ones((3, 3)))
    with pytest.raises(CheckpointError, match="weights.npy: a single .npy array, not a checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_directory_or_fifo_is_a_checkpoint_error_without_blocking(tmp_path, kind):
    path = tmp_path / "model.npz"
    path.mkdir() if kind == "dir" else __import__("os").mkfifo(path)
    with pytest.raises(CheckpointError, match="model.npz: is a (directory|FIFO)"):
        load_checkpoint(path)


def test_an_entry_declaring_gigabytes_is_refused_from_its_header_alone(saved, no_data_reads):
    bomb = _npy_header("<f4", (100_000, 100_000)) + b"\0" * 1000       # 40 GB declared, 1 kB present
    _replace_member(saved, "param/tok_emb", bomb)
    with pytest.raises(CheckpointError, match=r"model.npz.*tok_emb is float32 \(100000, 100000\)"):
        load_checkpoint(saved)


def test_a_config_implying_gigabytes_is_refused_before_any_data_is_read(model, saved, no_data_reads):
    config = {**model.config.to_dict(), "d_model": 2 ** 20, "n_heads": 2, "d_ff": 2 ** 22}
    _replace_member(saved, "model_config", _json_npy(config))
    with pytest.raises(CheckpointError, match=r"model.npz: the model config implies \d+\.\d GiB"):
        load_checkpoint(saved)


def _json_npy(obj, text=None):
    import io
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(obj) if text is None else text))
    return buf.getvalue()


def test_parameters_of_the_wrong_dtype_are_refused(saved):
    import io
    buf = io.BytesIO()
    with np.load(saved) as npz:
        np.save(buf, npz["param/ln_f.g"].astype(np.int32))
    _replace_member(saved, "param/ln_f.g", buf.getvalue())
    with pytest.raises(CheckpointError, match="ln_f.g is int32"):
        load_checkpoint(saved)


@pytest.mark.parametrize("text, words", [
    ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ('{"a":' * 40 + "1" + "}" * 40, "nested too deeply"),
    ("9" * 10_000, "not valid JSON"),
    ("Infinity", "not valid JSON"),
], ids=["recursion", "depth", "huge_int", "infinity"])
def test_hostile_json_in_the_config_is_a_checkpoint_error(saved, text, words):
    _replace_member(saved, "model_config", _json_npy(None, text))
    with pytest.raises(CheckpointError, match=f"model.npz.*{words}"):
        load_checkpoint(saved)


@pytest.mark.parametrize("field, value", [("alpha", "Infinity"), ("d_model", '"wide"'), ("max_len", "1e400"),
                                          ("window", "true"), ("n_layers", str(10 ** 30))])
def test_config_values_of_the_wrong_type_or_size_are_checkpoint_errors(model, saved, field, value):
    config = json.dumps(model.config.to_dict()).replace(f'"{field}": {json.dumps(model.config.to_dict()[field])}',
                                                        f'"{field}": {value}')
    assert value in config
    _replace_member(saved, "model_config", _json_npy(None, config))
    with pytest.raises(CheckpointError, match="model.npz"):
        load_checkpoint(saved)


def test_a_training_state_larger_than_the_model_allows_is_refused(model, tmp_path, no_data_reads):
    path = tmp_path / "train.npz"
    big = {"m/x": np.zeros(3 * model.n_params + 2 ** 18, dtype=np.float32)}
    save_checkpoint(path, model, train_state={"meta": {}, "arrays": big})
    with pytest.raises(CheckpointError, match="training state .* does not fit"):
        load_checkpoint(path)


def test_a_member_that_is_not_an_npy_array_is_refused(saved):
    with zipfile.ZipFile(saved, "a") as z:
        z.writestr("evil.pkl", b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="'evil.pkl' is not a .npy array"):
        load_checkpoint(saved)


def test_old_checkpoints_keep_the_positions_their_config_names(tmp_path):
    config = ModelConfig(vocab_size=9, d_model=8, n_layers=1, n_heads=2, d_ff=8, max_len=8, positional="sinusoidal")
    save_checkpoint(tmp_path / "old.npz", init_model(config, np.random.default_rng(0)))
    assert ModelConfig(vocab_size=9).positional == "relative"
    assert load_checkpoint(tmp_path / "old.npz").model.config.positional == "sinusoidal"
