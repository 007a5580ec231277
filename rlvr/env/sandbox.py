"""Run model-written Python in a subprocess that may not reach past its limits.

    result = run_sandboxed("print(6 * 7)", timeout_s=5, memory_mb=256)   # -> stdout "42\\n", ended "exit"

The limits, each enforced by the operating system or by the interpreter itself before the code
runs, and each tested (tests/unit/env/test_sandbox.py):

- time: the parent kills the child's whole process group at `timeout_s` of wall-clock time
  (RLIMIT_CPU backs it up for a busy loop);
- memory: RLIMIT_AS caps the address space at `memory_mb` (an allocation past it raises
  MemoryError in the child, or the child dies);
- network: the child is started in a network namespace of its own with no interface but a down
  loopback (unshare, where the kernel allows it), and an audit hook refuses every socket
  connect, bind and send and every name lookup in any case;
- file system: the child runs in a fresh temporary folder, removed afterwards; the audit hook
  refuses opening a file outside it for writing, and outside it and the interpreter's own library
  folders for reading, and refuses removing, renaming or creating anything outside it;
- processes and native code: the audit hook refuses starting processes (subprocess, os.system,
  exec, spawn, fork) and loading native code through ctypes, which would step around the hook.

An audit hook cannot be removed once installed (PEP 578). This is a sandbox for an RL reward
loop's generated snippets, not for hostile code with kernel exploits: run such work in a
container or VM of its own as well.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# the child's first code: limits, then the audit hook, then the model's code (argv[1]: the folder)
_BOOT = r"""
import os, resource, sys
folder, libs, memory, cpu = sys.argv[1], sys.argv[2].split(os.pathsep), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
os.chdir(folder)
code = sys.stdin.read()

def inside(path, roots):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "")
    except (TypeError, ValueError):
        return False
    return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

BLOCKED = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
           "socket.gethostbyname", "socket.gethostbyaddr", "subprocess.Popen", "os.system", "os.exec",
           "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
           "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.chdir", "sys.addaudithook",
           "os.symlink", "os.link", "os.chmod", "os.chown", "os.truncate")
CHANGES = ("os.remove", "os.rename", "os.mkdir", "os.rmdir", "shutil.rmtree", "shutil.move", "shutil.copyfile",
           "os.utime")

def hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1] or "r", args[2] or 0
        writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        roots = [folder] if writing else [folder, *libs]
        if not inside(args[0], roots):
            raise PermissionError(f"sandbox: no access to {args[0]!r} outside the sandbox folder")
    elif event in CHANGES and not all(inside(a, [folder]) for a in args[:2] if isinstance(a, (str, bytes))):
        raise PermissionError(f"sandbox: {event} outside the sandbox folder is not allowed")

sys.addaudithook(hook)
del hook
exec(compile(code, "<code>", "exec"), {"__name__": "__main__"})
"""


@dataclass
class SandboxResult:
    """What a sandboxed run printed and how it ended."""

    stdout: str
    stderr: str
    returncode: int | None
    ended: str  # "exit" (it finished, any exit code), "timeout" (killed at the time limit)

    def text(self, max_chars: int = 2000) -> str:
        """stdout then stderr, cut to `max_chars`, and a line saying how it ended unless it exited 0."""
        out = self.stdout + (("\n" if self.stdout and not self.stdout.endswith("\n") else "") + self.stderr
                             if self.stderr else "")
        if len(out) > max_chars:
            out = out[:max_chars] + f"\n[... {len(out) - max_chars} more characters]"
        if self.ended == "timeout":
            out += "\n[killed: time limit]"
        elif self.returncode:
            out += f"\n[exit code {self.returncode}]"
        return out.strip()


def _library_folders() -> list[str]:
    """Folders the child may read: the interpreter's standard library and installed packages."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {os.path.dirname(os.__file__), sys.base_prefix, sys.prefix}
    return sorted(os.path.realpath(p) for p in paths if p)


def _isolate() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)  # failure leaves the audit hook as the guard
    except Exception:
        pass


def run_sandboxed(code: str, *, timeout_s: float = 5.0, memory_mb: int = 256) -> SandboxResult:
    """Run `code` with `python -I -S` under the limits above; stdout and stderr come back whole."""
    folder = tempfile.mkdtemp(prefix="rlvr-sandbox-")
    argv = [sys.executable, "-I", "-S", "-c", _BOOT, os.path.realpath(folder), os.pathsep.join(_library_folders()),
            str(memory_mb << 20), str(max(int(timeout_s) + 1, 1))]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": folder}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=folder, env=env, preexec_fn=_isolate)
    try:
        out, err = proc.communicate(code, timeout=timeout_s)
        ended = "exit"
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        ended = "timeout"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return SandboxResult(out, err, proc.returncode, ended)
