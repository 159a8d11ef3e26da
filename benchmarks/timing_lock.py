"""One timed region at a time across benchmark processes that share a device.

Two benchmarks run side by side on one GPU (to overlap their compiles, which are CPU work) must not time
at the same moment. With ``GRAPHCACHE_TIMING_LOCK`` set to a file path, :func:`exclusive` holds an
exclusive ``flock`` on it for the duration of a timed region; unset, it does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    path = os.environ.get("GRAPHCACHE_TIMING_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run under :func:`exclusive`."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with exclusive():
            return fn(*args, **kwargs)

    return run
