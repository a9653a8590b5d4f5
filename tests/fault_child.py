"""Fault injection for ``fit``: a training process killed (SIGKILL) or interrupted (SIGINT) at random times.

Run by ``tests/test_fault_injection.py`` (not collected by pytest)::

    python tests/fault_child.py kill|sigint FOLDER ROUNDS SEED [RESUMES]
    python tests/fault_child.py fresh FOLDER

``kill`` / ``sigint``: this process trains the reference run (``fit`` without interruption), then per
round forks a child that trains with ``checkpoint_every=1`` (``resume=True``), and after a seeded random
delay sends it SIGKILL or SIGINT. It then checks the checkpoint (it loads; after SIGINT the child's
``fit`` returned a ``FitResult`` with ``interrupted=True`` whose ``num_steps`` is the checkpoint's step;
no temporary file is left) and, for the first ``RESUMES`` rounds, resumes training to the end and compares
the parameters with the reference run's (bit for bit). One JSON line per round on stdout.

``fresh``: a fresh interpreter's *first* ``fit`` (torch's lazy imports of sympy and torch._dynamo happen
in it); prints ``ready`` just before calling it, and after the SIGINT the parent sends, a second ``fit``
must still work (on main an interrupted lazy import broke every later ``fit`` of the process).
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import sys
import time

import torch

import pyro_meta
from pyro_meta.data import LinearTasks
from pyro_meta.models import BayesianLinear

NUM_STEPS = 40
FIT = dict(num_steps=NUM_STEPS, tasks_per_batch=8, lr=0.05, seed=5, progress=False)


def new_model() -> BayesianLinear:
    torch.manual_seed(0)
    return BayesianLinear()


def train(path=None, model=None, **kw) -> pyro_meta.FitResult:
    model = new_model() if model is None else model
    result = pyro_meta.fit(model, LinearTasks(), checkpoint=path, **dict(FIT, **kw))
    result.model = model
    return result


def temps(folder: str) -> list:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, ".ckpt-*")))


def rounds(mode: str, folder: str, num_rounds: int, seed: int, resumes: int) -> None:
    torch.set_num_threads(1)
    train(num_steps=2)  # the first fit of a process imports more (sympy, torch._dynamo): not timed
    t0 = time.perf_counter()
    reference = train(os.path.join(folder, "reference.ckpt"), checkpoint_every=1)  # as the rounds run (same numbers)
    duration = time.perf_counter() - t0
    ref_state = {k: v.clone() for k, v in reference.model.state_dict().items()}
    rng = random.Random(seed)
    for r in range(num_rounds):
        run_dir = os.path.join(folder, f"round{r}")
        os.makedirs(run_dir)
        path = os.path.join(run_dir, "c.ckpt")
        report = os.path.join(run_dir, "result.json")
        delay = rng.uniform(0.002, 0.75 * duration)  # within the run even when a round runs faster than the reference
        model = new_model()  # built before the fork: the child's first statement is the call of fit
        pid = os.fork()
        if pid == 0:  # the training process
            code = 0
            try:
                res = train(path, model, checkpoint_every=1)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a signal arriving after fit returned: ignored
                with open(report, "w") as f:
                    json.dump({"interrupted": res.interrupted, "num_steps": res.num_steps}, f)
            except BaseException as e:  # noqa: BLE001 - reported through the exit status
                sys.stderr.write(f"child: {type(e).__name__}: {e}\n")
                code = 3
            finally:
                os._exit(code)
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL if mode == "kill" else signal.SIGINT)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        out = {"round": r, "delay": round(delay, 3), "exit": os.waitstatus_to_exitcode(status)}
        if mode == "sigint":
            out["result"] = json.load(open(report)) if os.path.exists(report) else None
        if os.path.exists(path):
            try:
                out["step"] = pyro_meta.load_checkpoint(path)["step"]
            except Exception as e:  # noqa: BLE001 - reported
                out["load_error"] = f"{type(e).__name__}: {e}"
        else:
            out["step"] = None  # killed before its first checkpoint
        out["temps_after_fault"] = temps(run_dir)
        if r < resumes and "load_error" not in out:
            resumed = train(path, checkpoint_every=1000, resume=True)
            out["resumed_steps"] = resumed.num_steps
            out["equal"] = all(torch.equal(v, ref_state[k]) for k, v in resumed.model.state_dict().items())
            out["temps_after_resume"] = temps(run_dir)
        print(json.dumps(out), flush=True)


def fresh(folder: str) -> None:
    torch.set_num_threads(1)
    path = os.path.join(folder, "c.ckpt")
    print("ready", flush=True)
    # the process's first fit: lazy imports happen in it; long enough that the parent's SIGINT lands in it on a
    # fast machine too (it returns at the signal), and should the signal still come after it, wait for it here:
    # a SIGINT after the last fit would be an ordinary KeyboardInterrupt, not what this checks
    landed, first = [], None
    try:
        first = train(path, checkpoint_every=1, num_steps=20 * NUM_STEPS)
        signal.signal(signal.SIGINT, lambda *_: landed.append(True))
        deadline = time.monotonic() + 120
        while not first.interrupted and not landed and time.monotonic() < deadline:
            time.sleep(0.01)
    except KeyboardInterrupt:
        if first is None:  # it escaped fit: the failure this test exists for
            raise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    second = train(os.path.join(folder, "d.ckpt"), num_steps=5)
    print(
        json.dumps(
            {
                "first_interrupted": first.interrupted,
                "first_steps": first.num_steps,
                "step": pyro_meta.load_checkpoint(path)["step"],
                "second_steps": second.num_steps,
                "second_interrupted": second.interrupted,
                "temps": temps(folder),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] == "fresh":
        fresh(sys.argv[2])
    else:
        rounds(
            sys.argv[1],
            sys.argv[2],
            int(sys.argv[3]),
            int(sys.argv[4]),
            int(sys.argv[5]) if len(sys.argv) > 5 else int(sys.argv[3]),
        )
