"""Where rlvr's helper processes come from: one start method for every part that runs user code
in a process of its own (reward isolation's workers, a tool call with `tool_process: true`).

Forking the trainer itself would copy its threads' locks and its torch state into the child, so
the children come from multiprocessing's fork server: a small process started once, on first use,
that imports `__main__` and the modules named here, then forks a child per request (tens of ms).
Where the platform has no fork server (Windows), each child is spawned (a fresh interpreter).
"""

from __future__ import annotations

import multiprocessing
from typing import Any


def child_context(*preload: str) -> Any:
    """The multiprocessing context for a helper process: forkserver, else spawn. `preload` names
    modules the fork server imports when it starts, after `__main__` (a module the children need,
    so each child does not import it again); once the fork server runs, the list has no effect,
    and a child imports what its target needs itself.

    >>> child_context("rlvr.env.base").get_start_method() in ("forkserver", "spawn")
    True
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *preload])
    return ctx
