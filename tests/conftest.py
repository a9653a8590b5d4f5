"""Shared fixtures: every test starts with an empty param store, a fixed seed and one torch thread."""

import os

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# one thread from the start: module-scoped fixtures (meta-training) run before the autouse fixture
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)
    yield
    pyro.clear_param_store()


@pytest.fixture
def generator():
    """A seeded torch.Generator for task sampling."""
    return torch.Generator().manual_seed(0)
