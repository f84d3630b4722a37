"""BLAS threads sized to the work and to the machine's load (music_attn._threads)."""

from threadpoolctl import threadpool_info

from music_attn import _threads


def _blas_threads_now():
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_small_products_run_on_one_blas_thread(monkeypatch):
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert _threads.blas_threads(_threads.SPIN_FLOPS / 2) == 1
    assert _threads.blas_threads(_threads.SPIN_FLOPS * 10) == _threads.cpu_count()


def test_a_busy_machine_gets_one_blas_thread(monkeypatch):
    monkeypatch.setattr(_threads.os, "getloadavg", lambda: (_threads.cpu_count() + 2.0, 0.0, 0.0))
    assert _threads.free_cores() == 1
    assert _threads.blas_threads(1e12) == 1
    with _threads.sized_blas(1e12):
        assert _blas_threads_now() <= {1}


def test_sized_blas_restores_the_setting_it_found(monkeypatch):
    before = _blas_threads_now()
    with _threads.sized_blas(1.0):
        assert _blas_threads_now() <= {1}
    assert _blas_threads_now() == before
