"""Shared fixtures: every test starts with an empty param store, a fixed seed and one torch thread."""

import os
import signal

import pyro
import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("MPLBACKEND", "Agg")
# one thread from the start: module-scoped fixtures (meta-training) run before the autouse fixture
torch.set_num_threads(1)
# Ctrl-C as in a terminal: a job started in the background by a non-interactive shell (`make test &`) inherits
# SIGINT ignored, and the interrupt tests (in this process and in the children it starts) would see nothing
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Hypothesis profiles of the fuzz suite (tests/fuzz): "ci" is seeded (derandomized) and small, for every
# `make test`; "fuzz" (`make fuzz`) explores 1,000 random examples per test. HYPOTHESIS_PROFILE picks one.
_QUIET = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.function_scoped_fixture,
]
settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, database=None, suppress_health_check=_QUIET
)
settings.register_profile("fuzz", max_examples=1000, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture
def write_png():
    """``write_png(path, array)``: save a uint8 ``[H, W]`` (mode L) or bool array (mode 1, True = white) as PNG."""
    import numpy as np
    from PIL import Image

    def write(path, array):
        array = np.asarray(array)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(array.astype(bool)).convert("1") if array.dtype == bool else Image.fromarray(array)
        image.save(path)
        return path

    return write


#: the longest tests (2-6 minutes each on a 2-core CI machine, `make test --durations`) go first: pytest-xdist's
#: work stealing balances the short ones around them, whereas one of them started last keeps a worker busy
#: while the other idles
LONGEST_FIRST = (
    "tests/test_benchmarks_smoke.py::test_docs_generator_smoke",
    "tests/inference/test_exactness.py::test_method_matches_closed_form[nuts]",
    "tests/test_readme.py::test_readme_hierarchical_and_flow_blocks_run",
    "tests/test_diagnostics.py::test_nuts_passes_sbc",
)


def pytest_collection_modifyitems(session, config, items):
    """Run :data:`LONGEST_FIRST` before the rest (which keep their collection order)."""
    rank = {nodeid: i for i, nodeid in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))
