"""The fuzz suite: every test is marked ``fuzz``; the tally of outcomes is printed after the run."""

import pytest

from ._check import TALLY


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/fuzz/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.fuzz)


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    total = sum(sum(c.values()) for c in TALLY.values())
    clear = sum(c["clear"] for c in TALLY.values())
    terminalreporter.write_sep("-", f"fuzz: {clear} of {total} malformed inputs gave a clear error naming the argument")
    for area in sorted(TALLY):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(TALLY[area].items()))
        terminalreporter.write_line(f"  {area}: {counts}")
