"""Compiler tests: one torch thread (shared cores), a private CPU-timing cache."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread(tmp_path_factory: pytest.TempPathFactory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("FMFORGE_CACHE", str(tmp_path_factory.mktemp("fmcache")))
    yield
    mp.undo()
    torch.set_num_threads(n)
