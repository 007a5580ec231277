"""RemoteEngine without vLLM: fake worker servers behind httpx.MockTransport.

Each fake server answers the endpoints the engine uses (/health, /server_info, /get_world_size,
/weight_info, /v1/completions, /abort_requests); a server can be down (connection refused), slow,
failing (HTTP 500) or holding its requests until /abort_requests. Checked: one request per prompt
with n = G (prompt-group affinity), least-loaded routing, a failing worker's group resubmitted to
another, abort/resume, a launched worker restarted after it died, server-side version labels, and
the per-worker probe.
"""

import json
import threading
import time

import httpx
import pytest
import torch

from rlvr.rollout.base import GenerationAborted, SamplingParams
from rlvr.rollout.remote import RemoteEngine, WorkersDownError
from rlvr.rollout.sync import WeightSyncError, push_and_verify
from rlvr.types import Prompt, PromptBatch

pytestmark = [getattr(pytest.mark, "async")]


class Tokenizer:
    """Token t decodes to the letter chr(ord('a') + t); 0 pads, 1 ends a response."""

    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + int(t)) for t in ids if int(t) > 1)


class FakeServer:
    """One fake vLLM server. Its completions answer sample i of a request with tokens
    [seed % 7 + 2, i + 2, 1] and log-probs [-0.5, -0.25, -0.125]."""

    def __init__(self, port: int):
        self.url = f"http://w{port}:8000"
        self.up = True
        self.fail_completions = False  # HTTP 500 on /v1/completions
        self.delay_s = 0.0  # before an answer
        self.gate: threading.Event | None = None  # when set: answers wait for it (at most 10 s)
        self.hold = False  # keep requests until /abort_requests
        self.arrival_delay_s = 0.0  # a request reaches the server this late (the abort race)
        self.label = "default"
        self.probe_shift = 0.0  # added to every prompt log-prob (a worker with wrong weights)
        self.requests: list[dict] = []
        self.aborts = 0
        self.endings: list[str] = []  # how each held request ended: "abort" or "hold ran out"
        self._abort = threading.Event()
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/health":
            return httpx.Response(200)
        if path == "/server_info":
            return httpx.Response(200, json={"vllm_config": {"weight_transfer_config": {"backend": "gloo"}}})
        if path == "/get_world_size":
            return httpx.Response(200, json={"world_size": 1})
        if path == "/weight_info":
            return httpx.Response(200, json={"weight_version": self.label})
        if path in ("/pause", "/resume", "/reset_prefix_cache"):  # the push's steps (the transfer is faked)
            return httpx.Response(200, json={})
        if path == "/abort_requests":
            with self.lock:
                self.aborts += 1
                self._abort.set()
            return httpx.Response(200, json={"status": "aborted"})
        if path == "/v1/completions":
            return self.complete(json.loads(request.read()))
        return httpx.Response(404)

    def complete(self, body: dict) -> httpx.Response:
        if "prompt_logprobs" in body:  # the sync probe: log-prob -1 - 0.1 t of every token t after the first
            rows = [None] + [{str(t): {"logprob": -1.0 - 0.1 * t + self.probe_shift}} for t in body["prompt"][1:]]
            return httpx.Response(200, json={"choices": [{"index": 0, "prompt_logprobs": rows}]})
        time.sleep(self.arrival_delay_s)
        with self.lock:
            self.requests.append(body)
            self._abort.clear()
        if self.fail_completions:
            return httpx.Response(500, text="engine dead")
        if self.hold and self._held_until_abort():
            return httpx.Response(200, json={"choices": [{"index": i, "finish_reason": "abort", "token_ids": [],
                                                          "logprobs": None} for i in range(body["n"])]})
        time.sleep(self.delay_s)
        if self.gate is not None:
            self.gate.wait(10)
        choices = [{"index": i, "finish_reason": "stop", "token_ids": [body["seed"] % 7 + 2, i + 2, 1],
                    "logprobs": {"token_logprobs": [-0.5, -0.25, -0.125]}} for i in range(body["n"])]
        return httpx.Response(200, json={"choices": choices[::-1]})  # any order: the engine sorts by index


    def _held_until_abort(self) -> bool:
        """Hold the request until /abort_requests (True) or 10 s (False); `endings` records which."""
        aborted = self._abort.wait(timeout=10.0)
        with self.lock:
            self.endings.append("abort" if aborted else "hold ran out")
        return aborted


class Fleet:
    """The transport that routes each request to its fake server by host."""

    def __init__(self, *servers: FakeServer):
        self.servers = {httpx.URL(s.url).host: s for s in servers}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.servers[request.url.host].handle(request)


def engine_over(*servers, tmp_path, **kwargs) -> RemoteEngine:
    workers = kwargs.pop("workers", None) or [s.url for s in servers]
    return RemoteEngine(workers, Tokenizer(), str(tmp_path), transport=httpx.MockTransport(Fleet(*servers)),
                        health_every_s=kwargs.pop("health_every_s", 30.0), **kwargs)


def batch(counts) -> PromptBatch:
    prompts = [Prompt(f"p{j}", f"q{j}", [5, 6 + j], "x", {}) for j in range(len(counts))]
    return PromptBatch(prompts, list(counts))


PARAMS = SamplingParams(max_new_tokens=3, temperature=0.7)


def test_one_request_per_prompt_with_n_samples(tmp_path):
    a = FakeServer(1)
    engine = engine_over(a, tmp_path=tmp_path, seed=10)
    try:
        ro, served = engine.generate_with_info(batch([4, 0, 2]), PARAMS)
    finally:
        engine.close()
    # a group's samples go out as one request: prompts 0 and 2, none for the prompt with G = 0
    assert [(r["prompt"], r["n"], r["temperature"], r["max_tokens"]) for r in sorted(a.requests, key=lambda r: r["n"])
            ] == [([5, 8], 2, 0.7, 3), ([5, 6], 4, 0.7, 3)]
    assert sorted(r["seed"] for r in a.requests) == [10, 11]  # one seed per group, from the counter
    assert ro.group.tolist() == [0, 0, 0, 0, 2, 2]
    # rows in prompt order, then sample order (the server answered in reverse)
    assert ro.response_ids[:4, 1].tolist() == [2, 3, 4, 5]
    assert ro.lengths.tolist() == [3] * 6  # the end token stays in the response
    torch.testing.assert_close(ro.rollout_logprobs[0], torch.tensor([-0.5, -0.25, -0.125]))
    assert served[1] is None and served[0].url == served[2].url == a.url and served[0].version == 0


def test_groups_go_to_the_least_loaded_worker(tmp_path):
    a, b, c = FakeServer(1), FakeServer(2), FakeServer(3)
    engine = engine_over(a, b, c, tmp_path=tmp_path)
    try:
        for w, n in zip(engine.workers, (2, 0, 1)):
            w.outstanding = n
        worker, version = engine._acquire()
        assert worker.url == b.url and version == 0 and worker.outstanding == 1
        worker, _ = engine._acquire()  # b and c tie at 1: either, never a (2)
        assert worker.url in (b.url, c.url)
    finally:
        engine.close()


def test_a_slow_worker_gets_no_second_group_while_it_holds_one(tmp_path):
    """With at most 3 requests in flight over 3 workers, a worker holding a group is never the least
    loaded one (the other two would need a request each, a 4th in flight), so the slow worker serves
    at most one group and the fast ones all the others. Its answer waits until they have served
    them: no wall-clock bound."""
    a, b, c = FakeServer(1), FakeServer(2), FakeServer(3)
    a.gate = threading.Event()
    engine = engine_over(a, b, c, tmp_path=tmp_path, max_concurrency=3)

    def open_gate_when_the_others_are_done():
        while len(b.requests) + len(c.requests) + len(a.requests) < 12 and not a.gate.is_set():
            time.sleep(0.005)
        a.gate.set()

    opener = threading.Thread(target=open_gate_when_the_others_are_done, daemon=True)
    opener.start()
    try:
        _, served = engine.generate_with_info(batch([2] * 12), PARAMS)
    finally:
        a.gate.set()
        engine.close()
    urls = [s.url for s in served]
    assert urls.count(a.url) == len(a.requests) <= 1 and urls.count(b.url) + urls.count(c.url) >= 11


def test_a_failing_worker_is_marked_down_and_its_groups_resubmitted(tmp_path):
    a, b = FakeServer(1), FakeServer(2)
    engine = engine_over(a, b, tmp_path=tmp_path)
    a.fail_completions = True
    try:
        ro, served = engine.generate_with_info(batch([3] * 6), PARAMS)
        assert len(ro) == 18 and {s.url for s in served} == {b.url}
        # the group that went to a first was sent again whole, with the same seed
        retried = [s for s in served if s.attempts == 2]
        assert len(retried) == 1
        assert [r["seed"] for r in a.requests] == [r["seed"] for r in b.requests if r["seed"] == a.requests[0]["seed"]]
        assert engine.counters["worker_failures"] == 1 and engine.counters["requests_resubmitted"] == 1
        assert engine.worker_versions() == {b.url: 0}
        b.up = False  # the last worker goes: the error names every worker's state
        with pytest.raises(WorkersDownError, match="w1:8000: down"):
            engine.generate(batch([2]), PARAMS)
    finally:
        engine.close()


def test_abort_stops_the_generation_and_resume_lets_the_next_one_run(tmp_path):
    a, b = FakeServer(1), FakeServer(2)
    a.hold = b.hold = True
    engine = engine_over(a, b, tmp_path=tmp_path)
    outcome = {}

    def generate():
        try:
            engine.generate(batch([2] * 4), PARAMS)
        except GenerationAborted as e:
            outcome["error"] = e

    try:
        thread = threading.Thread(target=generate)
        thread.start()
        deadline = time.monotonic() + 5
        while len(a.requests) + len(b.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        engine.abort()
        thread.join(timeout=5)
        assert isinstance(outcome.get("error"), GenerationAborted)
        assert a.endings + b.endings == ["abort"] * 4  # ended by the abort, not by the servers' 10 s hold
        assert a.aborts >= 1 and b.aborts >= 1 and engine.counters["requests_aborted"] == 4
        assert engine.counters["requests_resubmitted"] == 0 and engine.counters["worker_failures"] == 0
        sent = len(a.requests) + len(b.requests)
        with pytest.raises(GenerationAborted):  # refused before anything is sent, until resume
            engine.generate(batch([2]), PARAMS)
        assert len(a.requests) + len(b.requests) == sent
        engine.resume()
        a.hold = b.hold = False
        assert len(engine.generate(batch([2] * 3), PARAMS)) == 6
        assert engine.metrics()["rollout/requests_in_flight"] == 0
    finally:
        engine.close()


def test_a_request_reaching_its_server_after_the_abort_is_aborted_too(tmp_path):
    a = FakeServer(1)
    a.hold, a.arrival_delay_s = True, 0.4  # the first /abort_requests comes before the request arrives
    engine = engine_over(a, tmp_path=tmp_path)
    try:
        timer = threading.Timer(0.1, engine.abort)
        timer.start()
        with pytest.raises(GenerationAborted):
            engine.generate(batch([2]), PARAMS)
        assert a.endings == ["abort"]  # the late request was aborted too, not left to the server's 10 s hold
        assert a.aborts >= 2
    finally:
        engine.close()


def test_a_batch_that_completes_despite_an_abort_is_still_aborted(tmp_path):
    a = FakeServer(1)
    a.delay_s = 0.4  # answers normally: the abort came too late for the server
    engine = engine_over(a, tmp_path=tmp_path)
    try:
        threading.Timer(0.1, engine.abort).start()
        with pytest.raises(GenerationAborted):  # the caller regenerates with the new weights, as for HFEngine
            engine.generate(batch([2, 2]), PARAMS)
        assert len(a.requests) == 2 and engine.counters["requests_aborted"] == 0
    finally:
        engine.close()


class FakeProcess:
    """What RemoteEngine reads of a launched WorkerServer: url, proc, alive(), start(), stop()."""

    def __init__(self, server: FakeServer):
        self.server, self.url, self.proc, self.starts = server, server.url, None, 0

    def alive(self):
        return self.server.up

    def start(self):  # a (re)started server loads the checkpoint again: vLLM's "default" label
        self.starts += 1
        self.server.up, self.server.label = True, "default"
        self.proc = self

    def stop(self):
        self.server.up = False
        self.proc = None

    def poll(self):
        return None if self.server.up else -9


def test_a_launched_worker_that_died_is_restarted_and_serves_again(tmp_path):
    a, b = FakeServer(1), FakeServer(2)
    pa, pb = FakeProcess(a), FakeProcess(b)
    engine = engine_over(a, b, tmp_path=tmp_path, workers=[pa, pb], health_every_s=0.05, owns_workers=True)
    try:
        assert pa.starts == pb.starts == 1
        a.up = False  # SIGKILL: the process is gone
        deadline = time.monotonic() + 5
        while engine.counters["worker_restarts"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.counters["worker_failures"] == 1 and engine.counters["worker_restarts"] == 1
        assert pa.starts == 2 and pb.starts == 1
        while a.url not in engine.worker_versions() and time.monotonic() < deadline:
            time.sleep(0.02)
        # nothing was pushed yet: the checkpoint it loaded again is the current version
        assert engine.worker_versions() == {a.url: 0, b.url: 0}
        b.fail_completions = True
        _, served = engine.generate_with_info(batch([2] * 3), PARAMS)
        assert {s.url for s in served} == {a.url}
    finally:
        engine.close()
    assert not a.up and not b.up  # close stops the servers it launched


def test_server_version_labels_are_this_engines_own(tmp_path):
    a, b, c = FakeServer(1), FakeServer(2), FakeServer(3)
    engine = engine_over(a, b, c, tmp_path=tmp_path)
    try:
        a.label, b.label, c.label = engine._label(3), "0123abcd:3", "7"  # b and c: another learner's pushes
        assert [engine._reported_version(w) for w in engine.workers] == [3, None, None]
        assert engine._label(3) == f"{engine.session}:3"
    finally:
        engine.close()


def test_the_probe_reads_every_ready_worker_and_names_the_wrong_one(tmp_path):
    a, b = FakeServer(1), FakeServer(2)
    b.probe_shift = 0.3  # b's weights are not the learner's
    engine = engine_over(a, b, tmp_path=tmp_path)
    engine.update_weights = lambda weights: None  # the push itself needs vLLM (tests/integration/test_workers.py)
    probe = [4, 5, 6]
    learner = lambda ids: torch.tensor([-1.0 - 0.1 * t for t in ids[1:]])
    try:
        got = engine.sequence_logprobs_all(probe)
        torch.testing.assert_close(got[a.url], torch.tensor([-1.5, -1.6]))
        with pytest.raises(WeightSyncError) as err:
            push_and_verify(engine, lambda: [], learner, probe, 1e-3)
        assert b.url in str(err.value) and a.url not in str(err.value) and "(0.3)" in str(err.value)
        b.probe_shift = 0.0
        gap = push_and_verify(engine, lambda: [], learner, probe, 1e-3)["rollout/sync_max_logprob_diff"]
        assert gap < 1e-6
    finally:
        engine.close()


def test_no_worker_answers(tmp_path):
    a = FakeServer(1)
    a.up = False
    with pytest.raises(WorkersDownError, match="no rollout worker answers"):
        engine_over(a, tmp_path=tmp_path)


# ---- a worker that comes back gets the kept weights --------------------------------------------------


class FakeLink:
    """The weight-transfer link of one server: records the tensors sent and sets the label at the end."""

    def __init__(self, server: FakeServer):
        self.server, self.sent = server, []
        self.client = type("Client", (), {"start_weight_update": lambda _: None,
                                          "finish_weight_update": lambda _, label: setattr(server, "label", label)})()

    def send(self, chunk, pool) -> None:
        self.sent.append(list(chunk.names))

    def close(self) -> None:
        pass


@pytest.mark.parametrize("keep", [None, False])
def test_a_restarted_single_worker_gets_the_kept_weights_and_serves_at_once(tmp_path, monkeypatch, keep):
    a = FakeServer(1)
    process = FakeProcess(a)
    links = []

    def ensure_link(self, w):
        if w.link is None:
            w.link = FakeLink(a)
            links.append(w.link)

    monkeypatch.setattr(RemoteEngine, "_ensure_link", ensure_link)
    engine = RemoteEngine([process], Tokenizer(), str(tmp_path), transport=httpx.MockTransport(Fleet(a)),
                          health_every_s=0.05, keep_weights=keep)
    try:
        assert engine.keep_weights is (keep is None)  # default: on with a single worker
        engine.update_weights(lambda: iter([("w", torch.ones(3))]), version=1)
        assert a.label == engine._label(1) and links[0].sent == [["w"]]
        a.up = False  # SIGKILL: the process is gone
        deadline = time.monotonic() + 20
        while engine.counters["worker_restarts"] < 1 or engine.workers[0].restarting:
            assert time.monotonic() < deadline, engine.workers[0]
            time.sleep(0.02)
        if keep is None:  # pushed again from the host copy, labelled as the version it is
            assert engine.counters["weights_repushed"] == 1 and a.label == engine._label(1)
            assert len(links) == 2 and links[1].sent == [["w"]]
            _, served = engine.generate_with_info(batch([2]), PARAMS)
            assert served[0].version == 1
        else:  # it holds the checkpoint's weights: no request until the learner's next push
            assert engine.counters["weights_repushed"] == 0 and a.label == "default"
            with pytest.raises(WorkersDownError, match="no rollout worker holds policy version 1"):
                engine.generate(batch([2]), PARAMS)
    finally:
        engine.close()
