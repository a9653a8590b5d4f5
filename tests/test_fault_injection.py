"""Fault injection: training processes killed (SIGKILL) and interrupted (SIGINT) at seeded random times.

Each test runs ``tests/fault_child.py`` in a subprocess, which forks the training processes itself and
reports one JSON line per fault (see its docstring). Reference: the same ``fit`` uninterrupted.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "fault_child.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
# SIGINT rounds: 10 in `make test`; `make fuzz` sets 50 (about 60 s on one core)
SIGINT_ROUNDS = int(os.environ.get("PYRO_META_SIGINT_ROUNDS", "10"))


def _rounds(mode: str, folder: Path, rounds: int, seed: int, resumes: int, timeout: float) -> list:
    proc = subprocess.run(
        [sys.executable, str(CHILD), mode, str(folder), str(rounds), str(seed), str(resumes)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == rounds, proc.stdout[-2000:] + proc.stderr[-2000:]
    return reports


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_a_loadable_checkpoint_and_an_exact_resume(tmp_path):
    reports = _rounds("kill", tmp_path, rounds=12, seed=0, resumes=12, timeout=600)
    killed = [r for r in reports if r["exit"] == -signal.SIGKILL]
    assert len(killed) >= 8, reports  # the delays are drawn within 3/4 of the reference run (timed under other load)
    for r in reports:
        assert "load_error" not in r, r  # atomic writes: the file is the old or the new checkpoint
        assert r["equal"] and r["resumed_steps"] == 40, r  # resumed from it: the uninterrupted run's parameters
        assert r["temps_after_resume"] == [], r  # a temp file a kill left behind is removed on resume
    assert any(r["step"] not in (None, 40) for r in killed)  # some kills landed mid-training


@pytest.mark.slow
def test_random_sigints_all_return_a_fit_result_and_a_loadable_checkpoint(tmp_path):
    """SIGINT_ROUNDS seeded interrupts of fit(checkpoint_every=1); the first 5 runs are also resumed and compared
    with the uninterrupted run."""
    reports = _rounds("sigint", tmp_path, rounds=SIGINT_ROUNDS, seed=1, resumes=5, timeout=900)
    interrupted = 0
    for r in reports:
        assert r["exit"] == 0 and r["result"] is not None, r  # fit returned: no KeyboardInterrupt escaped
        assert "load_error" not in r and r["temps_after_fault"] == [], r
        assert r["step"] == r["result"]["num_steps"], r  # the checkpoint holds what the FitResult says
        interrupted += r["result"]["interrupted"]
        if "equal" in r:
            assert r["equal"] and r["temps_after_resume"] == [], r
    assert interrupted >= 0.7 * len(reports), reports  # most signals land during training (the rest after it ended)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.6, 1.5])
def test_sigint_during_the_first_fit_of_a_process(tmp_path, delay):
    """On main a Ctrl-C in torch's lazy import of Adam (sympy) broke every later fit of the process."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "fresh", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["step"] == report["first_steps"] and report["temps"] == [], report
    assert report["second_steps"] == 5 and not report["second_interrupted"], report  # the next fit works
