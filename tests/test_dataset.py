"""Token datasets on disk: what is written, memory-mapped reading, splits, refusals, the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from music_attn.cli import main
from music_attn.music.tokenizers import RemiTokenizer
from music_attn.training.data import sample_windows
from music_attn.training.dataset import TOKENS, open_dataset, write_dataset

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twelve corpus files in a folder with a manifest giving two of them to validation."""
    folder = tmp_path_factory.mktemp("corpus")
    files = sorted((DATA / "oneills1850").glob("*.mid"))[:12]
    for f in files:
        shutil.copy(f, folder / f.name)
    rows = ["file,collection,title,split"] + [
        f"{f.name},x,{f.stem},{'validation' if i in (3, 7) else 'train'}" for i, f in enumerate(files)]
    (folder / "MANIFEST.csv").write_text("\n".join(rows) + "\n")
    return folder, files


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "set"
    return write_dataset(corpus[0], out, RemiTokenizer(), jobs=2, cache=False, progress=False)


def test_each_file_reads_back_as_its_own_tokens(corpus, dataset):
    tok = RemiTokenizer()
    seqs = dataset.sequences("all")
    assert [Path(f["file"]).name for f in dataset.files] == [f.name for f in corpus[1]]
    for path, seq in zip(corpus[1], seqs):
        np.testing.assert_array_equal(seq, tok.encode(path).ids)


def test_splits_follow_the_manifest(corpus, dataset):
    val = [Path(f["file"]).name for f in dataset.files if f["split"] == "validation"]
    assert val == [corpus[1][3].name, corpus[1][7].name]
    assert len(dataset.sequences("train")) == 10 and len(dataset.sequences("validation")) == 2


def test_token_file_is_raw_little_endian_uint16_in_index_order(dataset):
    raw = np.fromfile(dataset.path / TOKENS, dtype="<u2")
    index = json.loads((dataset.path / "index.json").read_text())
    assert raw.size == index["n_tokens"] == sum(f["length"] for f in index["files"])
    f = index["files"][5]
    np.testing.assert_array_equal(dataset.sequences("all")[5], raw[f["offset"]:f["offset"] + f["length"]])


def test_sequences_are_views_of_one_read_only_memory_map_not_copies(dataset):
    seqs = dataset.sequences("all")
    assert all(isinstance(s, np.memmap) and np.shares_memory(s, dataset.tokens) for s in seqs)
    assert not seqs[0].flags.writeable
    windows = sample_windows(seqs, 4, 16, np.random.default_rng(0))   # the training sampler reads them
    assert windows.shape == (4, 17)


def _rss_kb():
    """This process's resident memory now (kB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_1gb_dataset_costs_only_the_pages_read(tmp_path, dataset):
    big = tmp_path / "big"
    big.mkdir()
    n = 500_000_000                                       # 1 GB of uint16
    with open(big / TOKENS, "wb") as f:
        f.truncate(n * 2)                                 # sparse: no disk blocks, reads as zeros
    index = json.loads((dataset.path / "index.json").read_text())
    index.update(n_tokens=n, files=[{"file": "a.mid", "split": "train", "offset": 0, "length": n}])
    (big / "index.json").write_text(json.dumps(index))
    before = _rss_kb()
    ds = open_dataset(big)
    seq = ds.sequences("train")[0]
    windows = sample_windows([seq], 8, 256, np.random.default_rng(0))   # what a training step reads
    assert seq.size == n and windows.shape == (8, 257)
    assert _rss_kb() - before < 20_000                    # a few pages, not the 1,000,000 kB file
    del ds, seq


def test_a_folder_that_is_not_a_dataset_is_never_replaced(corpus, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a dataset"):
        write_dataset(corpus[0], keep, RemiTokenizer(), cache=False, progress=False)
    assert (keep / "notes.txt").read_text() == "precious"


def test_a_truncated_token_file_is_refused_with_the_folder_named(dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dataset.path, bad)
    with open(bad / TOKENS, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="bad"):
        open_dataset(bad)


def test_cli_writes_a_dataset_that_train_reads(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["tokenize", str(corpus[0]), "--out", str(out), "--jobs", "2"]) == 0
    assert "12 files (10 train, 2 validation)" in capsys.readouterr().out
    model = tmp_path / "m.npz"
    assert main(["train", str(out), "-o", str(model), "--steps", "2", "--batch-size", "2",
                 "--seq-len", "16", "--d-model", "8", "--layers", "1", "--heads", "2", "--quiet"]) == 0
    assert "training on 10 sequences" in capsys.readouterr().out


def test_cli_out_needs_one_folder(corpus, tmp_path, capsys):
    assert main(["tokenize", str(corpus[1][0]), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: --out takes one folder")
    assert not (tmp_path / "x").exists()
