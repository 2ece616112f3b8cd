"""Compiler tests: one torch thread (shared cores), a private CPU-timing cache (for this package
only: the simulation tests that run later keep the shared Verilator build cache)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")  # undone when tests/compiler is done
def _one_thread(tmp_path_factory: pytest.TempPathFactory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("FMFORGE_CACHE", str(tmp_path_factory.mktemp("fmcache")))
    yield
    mp.undo()
    torch.set_num_threads(n)
