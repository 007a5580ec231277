"""The disaggregated engine: rollouts from N vLLM servers over HTTP, weights pushed to every one.

Each worker is vLLM's own OpenAI-compatible server (rlvr.rollout.workers). The learner talks to
it through vLLM's endpoints only: /v1/completions to generate, /pause and /resume around a
weight update, vLLM's weight-transfer calls to stream the tensors (rlvr.rollout.transfer),
/reset_prefix_cache after it, /health to watch it.

Generation: one request per prompt with n = G_j and the prompt as token ids, so a group's G
samples run on one worker and share its prefix cache (prompt-group affinity); groups go to the
ready worker with the fewest outstanding requests, concurrently from a thread pool. Outputs are
assembled exactly as by the colocated vLLM engine (same cut, texts decoded by the HF tokenizer,
the sampled tokens' log-probs after temperature).

Policy versions: a worker is *ready* when its weights are the engine's current version. An update
waits for the requests in flight to finish and sends no new one meanwhile (a gate), so every group
is tagged with the version that produced it (`generate_with_info`). Who decides about requests in
flight is the caller (rlvr.run.pipeline): with `rollout.in_flight: finish` it pushes between two
batches; with `abort` it calls `abort()` first, which aborts this engine's requests on every worker
(vLLM's /abort_requests) and makes the running `generate` raise GenerationAborted, then `resume()`
and pushes. Versions are labelled on the servers with this engine's session ("<session>:<version>"),
so a server left with another learner's weights never passes for current.

Reproducibility: every request carries a seed from a counter (seed, seed + 1, ... in submission
order; a resubmitted group keeps its seed). vLLM seeds each request's own sampler (sample i of
the request uses seed + i), so the same requests against the same weights draw the same tokens
whichever worker serves them and whatever else runs in the batch, up to floating-point
differences of batched kernels (rare flips of near-tied tokens). Not deterministic: which worker
serves a group, and the counter across a run whose groups are resubmitted in another order.

Faults: a request that fails to connect, times out, or gets a server error marks its worker down
and the group is resubmitted to another one (regenerated whole). A health thread (GET /health
every few seconds) marks workers up and down and restarts the workers this engine launched when
their process dies. A revived or restarted worker takes requests again once it holds the current
weights: at once if nothing was pushed yet (it loaded the checkpoint), otherwise after the next
`update_weights` (which pushes to every live worker; the learner's weights are not kept here).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch

from rlvr.rollout.base import GenerationAborted, SamplingParams, WeightsFn, assemble_rollouts, rows_of
from rlvr.rollout.transfer import TransferLink, chunks
from rlvr.rollout.vllm import eos_token_ids
from rlvr.rollout.workers import WorkerServer, WorkerSpec
from rlvr.types import PromptBatch, Rollouts

log = logging.getLogger(__name__)


class WorkersDownError(RuntimeError):
    pass


@dataclass(frozen=True)
class Served:
    """Who generated one prompt's group: the worker, the policy version of its weights, the attempts."""

    url: str
    version: int
    attempts: int


@dataclass
class _Worker:
    url: str
    server: WorkerServer | None  # launched by this engine: restarted when its process dies
    alive: bool = False
    version: int | None = None  # policy version of its weights (None: unknown, takes no requests)
    link: TransferLink | None = None
    outstanding: int = 0
    restarting: bool = False
    restarts: int = 0
    last_error: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class _Retry(Exception):
    """A request that must be resubmitted: its worker failed, or someone else aborted it on the server."""

    def __init__(self, why: str, worker_failed: bool):
        super().__init__(why)
        self.worker_failed = worker_failed


class RemoteEngine:
    shares_learner_weights = False

    def __init__(
        self,
        workers: Sequence[str | WorkerServer],
        tokenizer: Any,
        model_path: str,
        *,
        seed: int = 0,
        request_timeout_s: float = 600.0,
        health_every_s: float = 5.0,
        restart: bool = True,
        max_restarts: int = 3,
        transfer_timeout_s: float = 600.0,
        chunk_mb: float = 256.0,
        max_concurrency: int = 64,
        owns_workers: bool = False,
        transport: httpx.BaseTransport | None = None,
        keep_weights: bool | None = None,
    ):
        """workers: server URLs (run by someone else) or WorkerServers (launched here, restartable).

        The workers' weights at the start count as policy version 0 when they are the checkpoint the
        server loaded; a server holding weights pushed by another engine takes no request until this
        one pushes. owns_workers: stop launched servers on `close` (and at interpreter exit).
        transport: the HTTP transport of every call to the workers (tests pass a fake one).
        keep_weights: keep a CPU copy of the last pushed weights, so that a worker that comes back
        (restarted, or reachable again) gets them at once instead of waiting for the next push;
        None: only with a single worker (where waiting would stop the run).
        """
        if not workers:
            raise ValueError("rollout.workers: no worker URL and no worker to start")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = eos_token_ids(model_path, tokenizer)
        self.seed = seed
        self.version = 0
        self.session = secrets.token_hex(4)  # labels this engine's pushes on the servers
        self.request_timeout_s = request_timeout_s
        self.health_every_s = health_every_s
        self.restart = restart
        self.max_restarts = max_restarts
        self.transfer_timeout_s = transfer_timeout_s
        self.chunk_bytes = int(chunk_mb * 2**20)
        self.owns_workers = owns_workers
        self.workers = [_Worker(w, None) if isinstance(w, str) else _Worker(w.url, w) for w in workers]
        self.keep_weights = len(self.workers) == 1 if keep_weights is None else keep_weights
        self._kept: list[tuple[str, torch.Tensor]] | None = None  # the last push's weights (keep_weights)
        self.http = httpx.Client(timeout=httpx.Timeout(request_timeout_s, connect=10.0), transport=transport,
                                 limits=httpx.Limits(max_connections=max_concurrency + 16))
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="rlvr-rollout")
        self._control = ThreadPoolExecutor(max(4, 2 * len(self.workers)), thread_name_prefix="rlvr-workers")
        self._cond = threading.Condition()
        self._update_lock = threading.Lock()
        self._updating = False
        self._aborted = False  # set by `abort`, cleared by `resume`
        self._epoch = 0  # counts aborts: a generate started before one is aborted even after `resume`
        self._closed = threading.Event()
        self._next_seed = seed
        self._tie = 0
        self.counters = {"worker_failures": 0, "requests_resubmitted": 0, "requests_aborted": 0,
                         "worker_restarts": 0, "weights_repushed": 0}
        self.last_served: list[Served | None] = []
        if owns_workers:
            atexit.register(self._stop_servers)  # a learner that dies without `close` leaves no server behind
        for w in self.workers:
            self._connect(w)
        if not any(w.alive for w in self.workers):
            self.close()
            raise WorkersDownError(self._down_message("no rollout worker answers"))
        self._health = threading.Thread(target=self._health_loop, name="rlvr-worker-health", daemon=True)
        self._health.start()

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """G_j samples of each prompt, as N contiguous rows (see `generate_with_info`)."""
        return self.generate_with_info(batch, params)[0]

    def generate_with_info(self, batch: PromptBatch, params: SamplingParams) -> tuple[Rollouts, list[Served | None]]:
        """Rollouts plus, per prompt, the worker and policy version that generated its group (None if G_j = 0).

        Thread-safe: may run in a producer thread while another thread calls `update_weights` or
        `abort`. Raises GenerationAborted once every request of the batch has ended when `abort` was
        called meanwhile (or before, without `resume` since).
        """
        jobs = [(j, g) for j, g in enumerate(batch.samples_per_prompt) if g > 0]
        with self._cond:
            epoch = self._epoch
            seeds = list(range(self._next_seed, self._next_seed + len(jobs)))
            self._next_seed += len(jobs)
        if self._is_aborted(epoch):
            raise GenerationAborted("generation aborted: new weights are coming (call resume() first)")
        futures = {j: self._pool.submit(self._run_group, self._request(batch.prompts[j].token_ids, g, params, s),
                                        epoch)
                   for (j, g), s in zip(jobs, seeds)}
        self._wait_all(list(futures.values()), epoch)
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors:  # a real failure goes before an abort: the batch would fail again
            raise next((e for e in errors if not isinstance(e, GenerationAborted)), errors[0])
        if self._is_aborted(epoch):  # every request got through, yet new weights are coming: as documented
            raise GenerationAborted("generation aborted: new weights are coming")
        served: list[Served | None] = [None] * len(batch.prompts)
        tokens, logprobs = [], []
        for j, _ in jobs:  # prompt order, then sample order: the rows of `rows_of(batch)`
            toks, lps, served[j] = futures[j].result()
            tokens += toks
            logprobs += lps
        decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)
        rollouts = assemble_rollouts(batch, rows_of(batch), tokens, logprobs, decode, self.eos_ids, self.pad_id,
                                     params.stop)
        self.last_served = served
        return rollouts, served

    def _wait_all(self, futures: list[Future], epoch: int) -> None:
        """Wait for every group; once aborted, abort the requests still running again and again (one
        sent just as `abort` was posting may reach its server after the abort and would run to the end)."""
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2)
            if pending and self._is_aborted(epoch):
                self._abort_running()

    def _request(self, prompt: list[int], n: int, params: SamplingParams, seed: int) -> dict[str, Any]:
        """The /v1/completions body of one group (the colocated engine's sampling settings)."""
        greedy = params.greedy
        return {"prompt": list(prompt), "n": n, "max_tokens": params.max_new_tokens, "seed": seed,
                "temperature": 0.0 if greedy else params.temperature, "top_p": 1.0 if greedy else params.top_p,
                "top_k": 0 if greedy else params.top_k, "stop": list(params.stop), "stop_token_ids": self.eos_ids,
                "include_stop_str_in_output": True, "skip_special_tokens": True, "ignore_eos": False,
                "logprobs": 0, "return_token_ids": True}

    def _run_group(self, body: dict[str, Any], epoch: int) -> tuple[list[list[int]], list[list[float]], Served]:
        """Send one group's request until a worker completes it; resubmit on failures, stop on `abort`."""
        attempts = 0
        while True:
            worker, version = self._acquire(epoch)
            attempts += 1
            try:
                choices = self._complete(worker, body)
            except _Retry as e:
                self._release(worker)
                if self._is_aborted(epoch):  # our own abort ended it (an aborted answer, or a failed one)
                    with self._cond:
                        self.counters["requests_aborted"] += 1
                    raise GenerationAborted(f"request aborted on {worker.url}: new weights are coming") from e
                with self._cond:
                    self.counters["requests_resubmitted"] += 1
                if e.worker_failed:
                    self._mark_down(worker, str(e))
                continue
            self._release(worker)
            tokens = [c["token_ids"] for c in choices]
            logprobs = [c["logprobs"]["token_logprobs"] if c["logprobs"] else [] for c in choices]
            return tokens, logprobs, Served(worker.url, version, attempts)

    def _complete(self, worker: _Worker, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST /v1/completions; the choices in sample order, or _Retry."""
        try:
            r = self.http.post(f"{worker.url}/v1/completions", json=body)
        except httpx.TransportError as e:  # refused, reset, timed out
            raise _Retry(f"{type(e).__name__}: {e}", worker_failed=True) from e
        if r.status_code >= 500:
            raise _Retry(f"HTTP {r.status_code}: {r.text[:300]}", worker_failed=True)
        if r.status_code >= 400:  # our request is wrong: no other worker would take it either
            raise RuntimeError(f"rollout worker {worker.url} rejected a request: HTTP {r.status_code}: {r.text[:500]}")
        choices = sorted(r.json()["choices"], key=lambda c: c["index"])
        if any(c["finish_reason"] == "abort" for c in choices):  # ours (see _run_group) or another client's
            raise _Retry("aborted on the server", worker_failed=False)
        if any(c["finish_reason"] == "error" or c.get("token_ids") is None for c in choices):
            raise _Retry(f"the server reported an error: {choices}", worker_failed=True)
        return choices

    def _acquire(self, epoch: int | None = None) -> tuple[_Worker, int]:
        """The ready worker with the fewest outstanding requests (waits while an update runs).

        epoch: a generation's abort count at its start; raises GenerationAborted once aborted.
        """
        with self._cond:
            while True:
                if self._closed.is_set():
                    raise WorkersDownError("the rollout engine is closed")
                if epoch is not None and self._is_aborted(epoch):
                    raise GenerationAborted("generation aborted: new weights are coming")
                ready = [w for w in self.workers if w.alive and w.version == self.version]
                if ready and not self._updating:
                    least = min(w.outstanding for w in ready)
                    tied = [w for w in ready if w.outstanding == least]
                    worker = tied[self._tie % len(tied)]
                    self._tie += 1
                    worker.outstanding += 1
                    return worker, self.version
                if not (self._updating or any(w.restarting for w in self.workers)):
                    raise WorkersDownError(self._down_message(f"no rollout worker holds policy version "
                                                              f"{self.version}"))
                self._cond.wait(timeout=1.0)

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            worker.outstanding -= 1
            self._cond.notify_all()

    # ---- abort and resume (rollout.in_flight: abort) ----------------------------------------------
    def abort(self) -> None:
        """Stop the generation in flight (it raises GenerationAborted as soon as its requests have
        ended) and refuse new ones until `resume`. The workers abort every request they run (vLLM's
        /abort_requests): this engine is their only client while it generates."""
        with self._cond:
            self._aborted = True
            self._epoch += 1
            self._cond.notify_all()
        self._abort_running()

    def resume(self) -> None:
        """Generate again after an `abort`."""
        with self._cond:
            self._aborted = False
            self._cond.notify_all()

    def _is_aborted(self, epoch: int) -> bool:
        return self._aborted or self._epoch != epoch

    def _abort_running(self) -> None:
        """POST /abort_requests to every live worker that runs requests of this engine."""
        with self._cond:
            busy = [w for w in self.workers if w.alive and w.outstanding]
        for w in busy:
            try:
                self.http.post(f"{w.url}/abort_requests", json={}, timeout=5.0)
            except httpx.HTTPError:  # a dead worker's requests fail by themselves
                pass

    # ---- the sync probe -------------------------------------------------------------------------
    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[S - 1] log-probs of a fixed sequence at temperature 1, from one ready worker."""
        worker, _ = self._acquire()
        try:
            return self._probe(worker, token_ids)
        finally:
            self._release(worker)

    def sequence_logprobs_all(self, token_ids: list[int]) -> dict[str, torch.Tensor]:
        """url -> [S - 1] log-probs from every ready worker (the per-worker weight-sync probe)."""
        with self._cond:
            ready = [w for w in self.workers if w.alive and w.version == self.version]
        return {w.url: self._probe(w, token_ids) for w in ready}

    def _probe(self, worker: _Worker, token_ids: list[int]) -> torch.Tensor:
        body = {"prompt": list(token_ids), "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        r = self.http.post(f"{worker.url}/v1/completions", json=body)
        r.raise_for_status()
        rows = r.json()["choices"][0]["prompt_logprobs"][1:]  # position 0 has no log-prob
        return torch.tensor([row[str(t)]["logprob"] for t, row in zip(token_ids[1:], rows)])

    # ---- weights ---------------------------------------------------------------------------------
    def update_weights(self, weights: WeightsFn, version: int | None = None) -> None:
        """Push the learner's weights to every live worker; they then serve policy `version` (default: +1).

        Requests in flight finish first on the old weights (call `abort` before to cut them short)
        and new ones wait until the update ends. A worker that fails during the push is marked down
        and takes no request until a later push reaches it.
        """
        new = self.version + 1 if version is None else version
        with self._update_lock:
            self._push(weights, new)

    def _push(self, weights: WeightsFn, new: int, only: list[_Worker] | None = None) -> None:
        """Push `weights` as policy `new` to every live worker, or to the workers `only` (a catch-up)."""
        if only is None and self.keep_weights:  # one copy, on the host, for workers that come back
            self._kept = [(n, t.detach().to("cpu", copy=True)) for n, t in weights()]
            weights = lambda: iter(self._kept)
        with self._cond:
            self._updating = True
            while any(w.outstanding for w in (only or self.workers)):  # they finish on the weights they started with
                self._cond.wait(timeout=1.0)
            targets = list(only) if only is not None else [w for w in self.workers if w.alive and not w.restarting]
        try:
            targets = self._each(targets, lambda w: self._post(w, "/pause", params={"mode": "wait"}))
            targets = self._each(targets, self._ensure_link)
            targets = self._each(targets, lambda w: w.link.client.start_weight_update())
            for chunk in chunks(weights(), self.chunk_bytes):  # the whole thunk, even if every target failed
                targets = [w for w in targets if self._try(w, lambda w, c=chunk: w.link.send(c, self._control))]
            targets = self._each(targets, lambda w: w.link.client.finish_weight_update(self._label(new)))
            targets = self._each(targets, lambda w: self._post(w, "/reset_prefix_cache"))
            with self._cond:
                for w in targets:
                    w.version = new
                self.version = new
        finally:
            self._each([w for w in (only or self.workers) if w.alive], lambda w: self._post(w, "/resume"))
            with self._cond:
                self._updating = False
                self._cond.notify_all()
        if not targets:
            raise WorkersDownError(self._down_message(f"the weights of policy version {new} reached no worker"))

    def _label(self, version: int) -> str:
        """The server-side name of a policy version pushed by this engine, e.g. "3fa9c2d1:7"."""
        return f"{self.session}:{version}"

    def _ensure_link(self, w: _Worker) -> None:
        """Open this learner's transfer group with `w` (again after a restart or a failed push)."""
        if w.link is not None:
            return
        if not w.info:
            raise RuntimeError(f"{w.url}: no server info")
        backend = w.info["backend"]
        if backend is None:
            raise RuntimeError(f"{w.url} was started without --weight-transfer-config (start it with `rlvr serve`)")
        # a previous learner may have left the server inside an update or holding its group
        if self._post(w, "/shutdown_weight_transfer_engine", check=False).status_code != 200:
            self._post(w, "/finish_weight_update", check=False)
            self._post(w, "/shutdown_weight_transfer_engine", check=False)
        link = TransferLink(w.url, backend, w.info["world_size"], self.transfer_timeout_s)
        link.open()
        w.link = link

    # ---- health and restarts -------------------------------------------------------------------
    def _connect(self, w: _Worker) -> None:
        """Read a healthy worker's settings and weight version and mark it up (else down)."""
        try:
            if w.server is not None and w.server.proc is None:
                w.server.start()
            if not self._healthy(w, time.monotonic() + 5.0):
                raise RuntimeError("GET /health does not answer")
            config = self._get(w, "/server_info", params={"config_format": "json"})["vllm_config"]
            transfer = config.get("weight_transfer_config") or {}
            world = self._get(w, "/get_world_size", params={"include_dp": "true"})["world_size"]
            version = self._reported_version(w)
        except Exception as e:  # any failure makes the worker unusable, said in last_error
            with self._cond:
                w.alive = False
                w.last_error = f"{type(e).__name__}: {e}"
            return
        with self._cond:
            w.info = {"backend": transfer.get("backend"), "world_size": world}
            w.version = version
            w.link = None
            w.alive = True
            self._cond.notify_all()

    def _healthy(self, w: _Worker, deadline: float) -> bool:
        """Poll GET /health until it answers 200 or the deadline passes."""
        while True:
            try:
                if self.http.get(f"{w.url}/health", timeout=2.0).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)

    def _reported_version(self, w: _Worker) -> int | None:
        """The policy version of the server's weights: 0 for the checkpoint it loaded (vLLM's "default"),
        the number of this engine's own label, None for anything else (another learner's push)."""
        label = self._get(w, "/weight_info")["weight_version"]
        if label in (None, "default"):
            return 0
        session, _, number = str(label).partition(":")
        return int(number) if session == self.session and number.isdigit() else None

    def _mark_down(self, w: _Worker, why: str) -> None:
        with self._cond:
            if w.alive:
                self.counters["worker_failures"] += 1
                log.warning("rollout worker %s is down: %s", w.url, why)
            w.alive = False
            w.link = None
            w.last_error = why
            self._cond.notify_all()

    def _health_loop(self) -> None:
        while not self._closed.wait(self.health_every_s):
            for w in self.workers:
                if w.restarting or self._closed.is_set():
                    continue
                if w.server is not None and not w.server.alive():
                    self._mark_down(w, f"process exited (code {w.server.proc.poll() if w.server.proc else None})")
                    if self.restart and w.restarts < self.max_restarts:
                        w.restarting = True
                        threading.Thread(target=self._restart, args=(w,), daemon=True).start()
                    continue
                try:
                    ok = self.http.get(f"{w.url}/health", timeout=min(5.0, self.health_every_s)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if not ok and w.alive:
                    self._mark_down(w, "GET /health failed")
                elif ok and not w.alive and not self._updating:
                    self._connect(w)
                    if w.alive:
                        self._post(w, "/resume", check=False)  # it may have died inside an update
                        self._catch_up(w)

    def _restart(self, w: _Worker) -> None:
        try:
            w.server.stop()
            w.server.start()
            with self._cond:
                w.restarts += 1
                self.counters["worker_restarts"] += 1
            self._connect(w)
            self._catch_up(w)
        except Exception as e:  # recorded; the run goes on with the other workers
            with self._cond:
                w.last_error = f"restart failed: {e}"
        finally:
            with self._cond:
                w.restarting = False
                self._cond.notify_all()

    def _catch_up(self, w: _Worker) -> None:
        """Give a worker that came back the current weights from the kept copy (keep_weights), so it
        serves at once; without a copy it waits for the learner's next push."""
        if self._kept is None or not w.alive or w.version == self.version:
            return
        with self._update_lock:
            if w.version != self.version:
                self._push(lambda: iter(self._kept), self.version, only=[w])
                with self._cond:
                    self.counters["weights_repushed"] += 1
                log.warning("rollout worker %s is back and has policy version %s again", w.url, self.version)

    # ---- plumbing --------------------------------------------------------------------------------
    def _get(self, w: _Worker, path: str, **kwargs: Any) -> Any:
        r = self.http.get(f"{w.url}{path}", timeout=30.0, **kwargs)
        r.raise_for_status()
        return r.json()

    def _post(self, w: _Worker, path: str, check: bool = True, **kwargs: Any) -> httpx.Response:
        r = self.http.post(f"{w.url}{path}", timeout=self.transfer_timeout_s, **kwargs)
        if check:
            r.raise_for_status()
        return r

    def _try(self, w: _Worker, fn: Callable[[_Worker], Any]) -> bool:
        """fn(w); on an exception mark the worker down (its transfer group is dropped) and return False."""
        try:
            fn(w)
            return True
        except Exception as e:  # one worker's failure must not stop the others
            self._mark_down(w, f"weight update: {type(e).__name__}: {e}")
            return False

    def _each(self, targets: list[_Worker], fn: Callable[[_Worker], Any]) -> list[_Worker]:
        """fn on every worker concurrently; the workers where it succeeded."""
        ok = list(self._control.map(lambda w: self._try(w, fn), targets))
        return [w for w, good in zip(targets, ok) if good]

    def _down_message(self, what: str) -> str:
        states = "; ".join(f"{w.url}: {'up' if w.alive else 'down'}, version {w.version}"
                           + (f", last failure: {w.last_error}" if w.last_error else "") for w in self.workers)
        return f"{what} ({states})"

    # ---- the rest of the engine protocol ---------------------------------------------------------
    def sleep(self) -> None:
        """No-op: the workers' memory is not the learner's."""

    def worker_versions(self) -> dict[str, int | None]:
        """url -> policy version of the weights each live worker serves."""
        with self._cond:
            return {w.url: w.version for w in self.workers if w.alive}

    def metrics(self) -> dict[str, float]:
        """rollout/workers_alive, requests in flight now, and the cumulative worker failures, resubmitted
        requests (their worker failed), aborted requests (`abort`) and restarts."""
        with self._cond:
            out = {f"rollout/{k}": float(v) for k, v in self.counters.items()}
            out["rollout/workers_alive"] = float(sum(w.alive for w in self.workers))
            out["rollout/requests_in_flight"] = float(sum(w.outstanding for w in self.workers))
        return out

    def state_dict(self) -> dict[str, int]:
        """The request seed counter, so that a resumed run continues the same seeds."""
        with self._cond:
            return {"next_seed": self._next_seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the seed counter of `state_dict()`."""
        with self._cond:
            self._next_seed = int(state["next_seed"])

    def close(self) -> None:
        """Stop the health thread and the clients; stop the servers launched here when this engine owns
        them (safe to call twice)."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        health = getattr(self, "_health", None)
        if health is not None:
            health.join(timeout=self.health_every_s + 10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)
        for w in self.workers:
            if w.link is not None:
                w.link.close()
        self._stop_servers()
        self.http.close()

    def _stop_servers(self) -> None:
        if self.owns_workers:
            atexit.unregister(self._stop_servers)
            for w in self.workers:
                if w.server is not None:
                    w.server.stop()


def start_workers(
    spec: WorkerSpec,
    tokenizer: Any,
    *,
    urls: Sequence[str] = (),
    num: int = 1,
    log_dir: str = "rollout_workers",
    gpus: Sequence[str] = (),
    start_timeout_s: float = 600.0,
    **engine_kwargs: Any,
) -> RemoteEngine:
    """The engine over `urls` if given, else over `num` workers started here from `spec`, on ports
    spec.port, spec.port + 1, ... with seeds spec.seed, spec.seed + 1, ...

    Started workers come up in parallel and are stopped by the engine's `close`; a failed start
    raises WorkerStartError with the server log's last lines. gpus: CUDA_VISIBLE_DEVICES per
    started worker (empty: inherited). engine_kwargs: RemoteEngine's (request_timeout_s,
    health_every_s, restart, ...).
    """
    if urls:
        return RemoteEngine(list(urls), tokenizer, spec.model_path, seed=spec.seed, **engine_kwargs)
    servers = [WorkerServer(dataclasses.replace(spec, port=spec.port + i, seed=spec.seed + i,
                                                gpus=gpus[i] if gpus else spec.gpus), log_dir, start_timeout_s)
               for i in range(num)]
    for s in servers:
        s.launch()
    try:
        for s in servers:
            s.wait_ready()
        return RemoteEngine(servers, tokenizer, spec.model_path, seed=spec.seed, owns_workers=True, **engine_kwargs)
    except BaseException:
        for s in servers:
            s.stop()
        raise
