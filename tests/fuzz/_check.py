"""The fuzz suite's one property: a malformed input gives a clear error naming the argument, fast.

``expect_clear_error(area, call, names)`` runs ``call()`` under a wall-clock alarm and requires a
``ValueError``/``TypeError`` (``CheckpointError`` is a ``ValueError``) whose message contains one of
``names``. Anything else fails the example: a silent success, another exception type (a raw torch or
Pyro error), a message that names none of the arguments, or a run past the alarm (a hang). Every
outcome is tallied per API area; ``tests/fuzz/conftest.py`` prints the tally after the run.
"""

from __future__ import annotations

import collections
import signal
import threading
from typing import Callable, Iterable, Tuple, Type

#: area -> Counter of outcomes ("clear", "silent", "raw", "unnamed", "hang")
TALLY: "collections.defaultdict[str, collections.Counter]" = collections.defaultdict(collections.Counter)

CLEAR: Tuple[Type[BaseException], ...] = (ValueError, TypeError)


class Hang(Exception):
    """The call ran past its time limit."""


def _alarm(signum, frame):
    raise Hang()


def expect_clear_error(
    area: str,
    call: Callable[[], object],
    names: Iterable[str],
    seconds: float = 30.0,
    allowed: Tuple[Type[BaseException], ...] = CLEAR,
) -> BaseException:
    """Run ``call``; assert it raises one of ``allowed`` naming one of ``names`` within ``seconds``."""
    names = tuple(names)
    use_alarm = threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        call()
    except Hang:
        TALLY[area]["hang"] += 1
        raise AssertionError(
            f"{area}: no answer within {seconds} s (a hang) for an input malformed in {names}"
        ) from None
    except allowed as err:
        message = str(err)
        if not any(n in message for n in names):
            TALLY[area]["unnamed"] += 1
            raise AssertionError(f"{area}: {type(err).__name__} names none of {names}: {message[:300]}") from err
        TALLY[area]["clear"] += 1
        return err
    except Exception as err:
        TALLY[area]["raw"] += 1
        raise AssertionError(
            f"{area}: raw {type(err).__name__} for an input malformed in {names}: {str(err)[:300]}"
        ) from err
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    TALLY[area]["silent"] += 1
    raise AssertionError(f"{area}: silent success for an input malformed in {names}")
