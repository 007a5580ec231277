"""The producer/buffer logic of asynchronous rollouts (rlvr/run/pipeline.py), with a fake engine:
how far ahead the producer runs, what a push does to a batch in flight, stale batches, the
checkpointed draws and a producer that dies."""

import threading
import time

import pytest
import torch

from rlvr.buffer.rollouts import Entry, staleness
from rlvr.rollout.base import GenerationAborted
from rlvr.run.pipeline import Pipeline, split_shares
from rlvr.types import Prompt, Rollouts, ScoredRollouts

pytestmark = getattr(pytest.mark, "async")  # a keyword in Python, so by name


def scored_of(indices: list[int], g: int = 2) -> ScoredRollouts:
    prompts = [Prompt(f"p{i}", f"q{i}", [1, 2], "0", {}) for i in indices]
    n = len(indices) * g
    ro = Rollouts(prompts, torch.arange(len(indices)).repeat_interleave(g), torch.ones(n, 1, dtype=torch.long),
                  torch.ones(n, 1), torch.zeros(n, 1), ["x"] * n, ["stop"] * n)
    return ScoredRollouts(ro, torch.arange(n, dtype=torch.float32), {}, torch.zeros(n, dtype=torch.bool))


class Sampler:
    """Draws 0,1 then 2,3 then ...: prompts_per_step consecutive indices."""

    def __init__(self):
        self.next = 0

    def draw(self, count, share, world):
        chosen = list(range(self.next, self.next + count))
        self.next += count
        return chosen, [2] * count


class FakeEngine:
    """generate() takes `delay` seconds, or blocks until aborted from call `hang_from` on while `hang` is set."""

    def __init__(self, delay=0.0):
        self.delay, self.hang, self.hang_from = delay, False, 1
        self.aborted = threading.Event()
        self.calls = 0

    def abort(self):
        self.aborted.set()

    def resume(self):
        self.aborted.clear()

    def generate(self):
        self.calls += 1
        deadline = time.monotonic() + self.delay
        while (self.hang and self.calls >= self.hang_from) or time.monotonic() < deadline:
            if self.aborted.is_set():
                raise GenerationAborted("new weights")
            time.sleep(0.002)


def make(k=1, steps=6, in_flight="finish", stale="regenerate", delay=0.0):
    sampler, engine = Sampler(), FakeEngine(delay)

    def produce(pick):
        chosen, counts = pick(2, 2, 1)
        engine.generate()
        return scored_of(chosen), chosen, {"reward/mean": 0.0}

    pipe = Pipeline(produce, sampler.draw, engine, k=k, stale=stale, in_flight=in_flight, steps=steps, rank=0,
                    world=1, plugin_lock=threading.RLock())
    return pipe, sampler, engine, None


def run_steps(pipe, first, last, learn_s=0.0):
    """The learner's side: take, 'train', push; returns each step's prompt indices and metrics."""
    seen = []
    for step in range(first, last + 1):
        scored, indices, metrics = pipe.take(step)
        time.sleep(learn_s)
        pipe.push(step, lambda: {})
        seen.append((indices, metrics))
    return seen


def test_k0_generates_each_step_with_the_previous_steps_weights():
    pipe, _, _, _ = make(k=0, steps=4)
    pipe.push(0, lambda: {})
    pipe.start(0)
    seen = run_steps(pipe, 1, 4)
    pipe.stop()
    assert [i for i, _ in seen] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(m["rollout/staleness_max"] == 0 for _, m in seen)


def test_k1_runs_one_step_ahead_and_never_more():
    pipe, sampler, _, _ = make(k=1, steps=8, delay=0.01)
    pipe.push(0, lambda: {})
    pipe.start(0)
    seen = run_steps(pipe, 1, 8, learn_s=0.03)
    # while the learner trains step s the producer may already have drawn step s + 1, never s + 2
    assert sampler.next <= 2 * 8
    pipe.stop()
    lags = [m["rollout/staleness_max"] for _, m in seen]
    assert lags[0] == 0 and max(lags) == 1 and lags.count(1) >= 5
    assert [i for i, _ in seen] == [[2 * s, 2 * s + 1] for s in range(8)]


def test_producer_waits_for_the_learner_k_steps_ahead():
    pipe, sampler, _, _ = make(k=2, steps=10)
    pipe.push(0, lambda: {})
    pipe.start(0)
    pipe.take(1)
    time.sleep(0.3)  # the learner is slow: the producer must stop at step 1 + k
    assert sampler.next == 2 * 3
    pipe.stop()


def test_abort_in_flight_regenerates_the_same_prompts_with_the_new_weights():
    pipe, sampler, engine, _ = make(k=1, steps=3, in_flight="abort")
    engine.hang, engine.hang_from = True, 2
    pipe.push(0, lambda: {})
    pipe.start(0)
    pipe.take(1)
    time.sleep(0.1)  # step 2 is being generated (drawn: prompts 2, 3) and hangs
    assert sampler.next == 4
    # the push aborts it, loads the weights (the engine would not hang with them) and lets it go again
    metrics = pipe.push(1, lambda: (setattr(engine, "hang", False), {})[1])
    scored, indices, m = pipe.take(2)
    pipe.stop()
    assert indices == [2, 3] and sampler.next >= 4  # the same draw again, not a new one
    assert m["rollout/aborted"] == 1 and m["rollout/staleness_max"] == 0  # made with version 1
    assert metrics["perf/push_wait_s"] < 5


def test_finish_in_flight_keeps_the_old_version():
    pipe, _, engine, _ = make(k=1, steps=3, in_flight="finish", delay=0.2)
    pipe.push(0, lambda: {})
    pipe.start(0)
    pipe.take(1)
    time.sleep(0.05)  # step 2 is in flight with version 0
    metrics = pipe.push(1, lambda: {})
    assert metrics["perf/push_wait_s"] > 0.05  # the push waited for it to finish
    _, _, m = pipe.take(2)
    pipe.stop()
    assert m["rollout/aborted"] == 0 and m["rollout/staleness_max"] == 1


@pytest.mark.parametrize("stale, dropped, regenerated", [("drop", 1, 0), ("regenerate", 0, 1)])
def test_a_batch_older_than_the_cap_is_dropped_or_regenerated(stale, dropped, regenerated):
    pipe, sampler, _, _ = make(k=1, steps=5, stale=stale)
    pipe.version = 4
    # a batch made with version 1 (group 0) and 3 (group 1), reached at step 5: lags 3 and 1
    entry = Entry(5, scored_of([8, 9]), [8, 9], {}, torch.tensor([1, 1, 3, 3]), [([8, 9], [2, 2])])
    kept, m = pipe._within_cap(entry, 5)
    assert m["rollout/stale_dropped"] == dropped and m["rollout/stale_regenerated"] == regenerated
    assert m["rollout/staleness_max"] <= 1
    if stale == "drop":
        assert kept.prompt_indices == [9] and kept.versions.tolist() == [3, 3]
    else:  # the same prompts again, with the current weights (version 4)
        assert kept.prompt_indices == [8, 9] and kept.versions.tolist() == [4, 4, 4, 4] and sampler.next == 0


def test_checkpoint_records_the_draws_not_yet_trained_and_resume_makes_them_first():
    pipe, sampler, _, _ = make(k=2, steps=10)
    pipe.push(0, lambda: {})
    pipe.start(0)
    pipe.take(1)
    time.sleep(0.3)
    with pipe.plugin_lock:
        state, sampler_next = pipe.state_dict(), sampler.next
    pipe.stop()
    assert state["pending_draws"] == [[[2, 3], [2, 2]], [[4, 5], [2, 2]]] and sampler_next == 6
    resumed, sampler2, _, _ = make(k=2, steps=10)
    sampler2.next = sampler_next  # the sampler's own state comes back from the same checkpoint
    resumed.load_state_dict(state)
    resumed.push(1, lambda: {})
    resumed.start(1)
    seen = run_steps(resumed, 2, 4)
    resumed.stop()
    assert [i for i, _ in seen] == [[2, 3], [4, 5], [6, 7]]  # as if it had never stopped


def test_a_producer_that_dies_raises_its_error_in_the_learner():
    def produce(pick):
        raise ValueError("reward 'mine' failed on sample 3")

    pipe = Pipeline(produce, Sampler().draw, FakeEngine(), k=1, stale="drop", in_flight="finish", steps=3, rank=0,
                    world=1, plugin_lock=threading.RLock())
    pipe.start(0)
    with pytest.raises(ValueError, match="reward 'mine' failed"):
        pipe.take(1)
    pipe.stop()


def test_staleness_and_shares():
    assert staleness(torch.tensor([3, 3, 4]), 5).tolist() == [1, 1, 0]
    shares = split_shares(scored_of([5, 6, 7, 8]), [5, 6, 7, 8], 2)
    assert [i for _, i in shares] == [[5, 6], [7, 8]]
    assert shares[1][0].rollouts.group.tolist() == [0, 0, 1, 1] and shares[1][0].rewards.tolist() == [4, 5, 6, 7]
