"""A run's life around the loop: the lock on its folder, and stopping cleanly.

Lock. Rank 0 holds `fcntl.flock` on `<run.output_dir>/rlvr.lock` for the whole run and writes
who holds it (pid, host, start time, command) into the file. A second `rlvr train` on the same
folder is refused at once with that information, before it touches anything. The kernel drops
the lock when the holder dies, however it dies (kill -9 included), so a crashed run never leaves
a stale lock behind; the file itself stays (removing it would let two processes lock two
different files of the same name). On a network filesystem flock is only as good as the
server's lock support: NFSv4 locks across clients; Lustre needs the `flock` mount option, and
where the filesystem refuses locks rlvr warns and runs without one.

Stopping. While `train()` runs, SIGTERM, SIGUSR1 (Slurm's warning before a time limit or
preemption) and SIGINT (Ctrl-C) do not kill the run: they ask it to stop at the end of the
current step. Every process agrees on that step, the run writes a checkpoint there, and it
raises `SignalStopped` (exit code 128 + the signal's number, as for a process the signal had
killed, so shells and launchers still see "ended by SIGTERM"). A second Ctrl-C, more than a
moment after the first, aborts at once without that checkpoint; checkpoints are written to a
temporary folder and renamed, so the previous one survives. Repeated SIGTERM/SIGUSR1 are
ignored: launchers (torchrun, srun) relay the same signal the process already received.
Other reasons to stop at a step boundary (alarms, non-finite updates) use the same path
through `StopRequest`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rlvr.errors import RlvrError, RunStopped

LOCK_FILE = "rlvr.lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# torchrun and srun relay the signal the workers already got from the terminal or the scheduler;
# a second SIGINT this soon after the first is that relay, not a second Ctrl-C
REPEAT_WINDOW_S = 2.0


# ---- the run folder's lock -----------------------------------------------------------------------


class RunLocked(RlvrError):
    """Another process holds the run folder's lock; nothing in the folder was touched.

    Exit code 75 (EX_TEMPFAIL in sysexits.h, "try again later"): the recipe is fine, the folder
    is busy.
    """

    exit_code = 75


class RunLock:
    """An exclusive `flock` on `<run_dir>/rlvr.lock`; `release()` (or process death) drops it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        """Take the lock or raise RunLocked naming the holder; never blocks."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(locked_message(run_dir, holder)) from None
        except OSError as err:  # ENOLCK, ENOSYS, EOPNOTSUPP: this filesystem cannot lock files
            os.close(fd)
            print(f"rlvr: warning: cannot lock {path} ({err.strerror}); two runs on this folder would not be "
                  "stopped from overwriting each other", file=sys.stderr)
            return cls(path, None)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Clear the holder information and drop the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # while still holding it: a new holder's information is never cut
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def holder_info() -> dict[str, Any]:
    """What a refused run tells the user about this process."""
    command = " ".join([_program(sys.argv[0]), shlex.join(sys.argv[1:])]) if sys.argv and sys.argv[0] else ""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command.strip()}


def _program(argv0: str) -> str:
    """`rlvr` for the console script, `python -m rlvr.cli` for a module run with -m (whose argv[0]
    is its file path)."""
    path = Path(argv0)
    if path.suffix != ".py":
        return path.name
    module = path.parent.name if path.stem == "__main__" else f"{path.parent.name}.{path.stem}"
    return f"python -m {module}"


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's information from the lock file, or {} if it has not written it yet."""
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def locked_message(run_dir: Path, holder: dict[str, Any]) -> str:
    """Two lines: who holds the folder (pid, host, start, command), and what to do."""
    if not holder:
        who = "another process (it has not written its details yet)"
    else:
        who = (f"another rlvr run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
               f"{holder.get('started', '?')}): {holder.get('command') or '?'}")
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            who += (f"\npid {pid} has exited, but a process it started still holds the lock; "
                    f"`fuser -v {run_dir / LOCK_FILE}` names it")
    return (f"run.output_dir: {run_dir} is in use by {who}\nWait for it to finish, stop it, or choose another "
            f"run.output_dir; nothing in {run_dir} was changed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# ---- stopping at a step boundary -----------------------------------------------------------------


class SignalStopped(RunStopped):
    """Stopped by SIGTERM, SIGUSR1 or SIGINT after writing a checkpoint at a step boundary.

    Exit code 128 + the signal's number (143 SIGTERM, 138 SIGUSR1, 130 SIGINT), what a shell
    reports for a process that signal killed: wrappers that look for "ended by a signal" still
    see it, and it differs from the 3 of other deliberate stops.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


@dataclass
class StopRequest:
    """Why the run stops at the end of this step.

    The loop writes a checkpoint at that step (unless `checkpoint` is False, e.g. for weights
    that are no longer finite), then raises `error(message)` whose message is `reason` plus
    what was saved and how to go on.
    """

    reason: str
    error: Callable[[str], RunStopped] = RunStopped
    checkpoint: bool = True
    how_to_go_on: str | None = None  # replaces the default advice after what was saved (alarms, non-finite)

    def stopped(self, step: int, saved: Path | None) -> RunStopped:
        """The exception to raise once the step's checkpoint (if any) is on disk."""
        if saved is not None:
            where = f"checkpoint written at step {step} ({saved}); {self.how_to_go_on or 'resume with the same command'}"
        else:
            where = (f"no checkpoint written at step {step}; "
                     f"{self.how_to_go_on or 'a resume continues from the latest complete one'}")
        return self.error(f"{self.reason}; {where}")


def signal_name(signum: int) -> str:
    """The signal's name for messages. Example: 15 -> "SIGTERM"."""
    return signal.Signals(signum).name


def signal_stop(signum: int) -> StopRequest:
    """The stop request for a received signal."""
    return StopRequest(f"{signal_name(signum)} received", lambda message: SignalStopped(message, signum))


@dataclass
class StopSignals:
    """While entered (main thread only), SIGTERM/SIGUSR1/SIGINT set `received` instead of killing.

    The loop reads `received` at each step boundary. `announce`: print one line when the first
    signal arrives (rank 0 only, so a job of many processes says it once). The handlers that
    were installed before are put back on exit, so `train()` called in-process leaves the
    caller's handlers as they were.
    """

    announce: bool = True
    repeat_window_s: float = REPEAT_WINDOW_S
    received: int | None = None
    _first_at: float = 0.0
    _previous: dict[int, Any] = field(default_factory=dict)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works nowhere else
            for signum in STOP_SIGNALS:
                # an ignored SIGINT stays ignored (what Python itself does: `cmd &` in a script must not
                # stop on the terminal's Ctrl-C); SIGUSR1 is ignored on purpose by launch.sh, for torchrun
                if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._first_at = signum, now
            extra = " (Ctrl-C again to abort at once, without it)" if signum == signal.SIGINT else ""
            self._say(f"rlvr: {signal_name(signum)} received: stopping at the end of this step, after a "
                      f"checkpoint{extra}")
        elif signum == signal.SIGINT and now - self._first_at > self.repeat_window_s:
            self._say("rlvr: second Ctrl-C: aborting now without a new checkpoint (the previous one is kept)")
            raise KeyboardInterrupt

    def _say(self, line: str) -> None:
        if self.announce:
            # os.write, not print: a handler may run in the middle of another write to stderr
            os.write(sys.stderr.fileno(), (line + "\n").encode())


class CheckpointClock:
    """`checkpoint.every_minutes`: due once that much time passed since the last checkpoint."""

    def __init__(self, minutes: float) -> None:
        self.period_s = minutes * 60.0
        self.reset()

    def reset(self) -> None:
        """Start the period again from now (called after each checkpoint)."""
        self._last = time.monotonic()

    def due(self) -> bool:
        """True once `every_minutes` have passed since the last reset; never when the period is 0."""
        return self.period_s > 0 and time.monotonic() - self._last >= self.period_s


@contextmanager
def run_folder_lock(run_dir: Path, acc: Any) -> Iterator[RunLock | None]:
    """Rank 0 holds the run folder's lock while the block runs; every process raises RunLocked
    together when it is taken (one broadcast), instead of the others waiting at a barrier."""
    lock, refused = None, None
    if acc.is_main_process:
        try:
            lock = RunLock.acquire(run_dir)
        except RunLocked as err:
            refused = str(err)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refused = broadcast_object_list([refused])[0]
    if refused is not None:
        raise RunLocked(refused)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename, so a kill never leaves it half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
