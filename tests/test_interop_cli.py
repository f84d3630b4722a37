"""The command line's interop paths without the optional extras: a clear one-line error."""

import sys

from music_attn.cli import main
from music_attn.training.data import shipped_melodies


def test_backend_torch_without_torch_is_a_one_line_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "music_attn.interop.torch_bridge", None)   # as if torch were absent
    out = tmp_path / "m.npz"
    code = main(["train", str(shipped_melodies()[0].parent), "-o", str(out), "--backend", "torch",
                 "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --backend torch needs PyTorch")
    assert not out.exists()
