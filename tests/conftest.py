"""Test-suite wide settings: every test sees an empty data cache and one CPU thread.

The cache: `SCOREFPE_CACHE` points at a fresh temporary directory for the whole session, so no
test can see (or be helped by) MNIST or LeNet weights in the user's home cache; a test that needs
MNIST-shaped data writes its own small IDX files there. Threads: torch's default (one per core)
oversubscribes a 2-core machine when anything else runs, which made the suite 5x slower; one
thread keeps it deterministic and fast.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _hermetic_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point $SCOREFPE_CACHE at an empty directory for the session, restoring it afterwards."""
    old = os.environ.get("SCOREFPE_CACHE")
    os.environ["SCOREFPE_CACHE"] = str(tmp_path_factory.mktemp("scorefpe_cache"))
    yield
    if old is None:
        os.environ.pop("SCOREFPE_CACHE", None)
    else:
        os.environ["SCOREFPE_CACHE"] = old
