"""User rewards that exit, crash, hang in C code or leak: the run survives, only the bad samples score 0.

Every reward here is a real file written into tmp_path and named as a recipe would name it
("file.py:fn"), and every fault really happens: sys.exit, os._exit, a segfault through ctypes, a
call that stays in C code past its timer (a long PBKDF2, a sleep with SIGALRM blocked), a leak of
50 MB per call. The runner is used directly (fast); one test runs `rlvr train` end to end.
"""

import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlvr.errors import RlvrError
from rlvr.reward import RewardError, RewardRunner, RewardSpec

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]

BAD_REWARDS = '''
import ctypes
import hashlib
import os
import signal
import sys

_kept = []


def exits(prompt, completion, row):
    if row["bad"]:
        sys.exit(3)
    return row["value"]


def hard_exit(prompt, completion, row):
    if row["bad"]:
        os._exit(1)
    return row["value"]


def segfault(prompt, completion, row):
    if row["bad"]:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return row["value"]


def c_hang(prompt, completion, row):
    if row["bad"]:
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)  # minutes inside C, which never looks at signals
    return row["value"]


def blocked_sleep(prompt, completion, row, seconds=100):
    """A C call that cannot be interrupted: SIGALRM is blocked while libc sleeps."""
    if row["bad"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            ctypes.CDLL(None).sleep(seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return row["value"]


def leak(prompt, completion, row):
    block = bytearray(50 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so that it is resident
    _kept.append(block)
    return row["value"]


def rss(prompt, completion, row):
    with open("/proc/self/statm") as f:
        return 1.0, {"rss_mb": int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20}


def pid(prompt, completion, row):
    return float(os.getpid())


def slow_pid(prompt, completion, row):
    import time

    time.sleep(0.1)
    return float(os.getpid())


def segfaults_on_3_and_7(prompt, completion, row):
    """For `rlvr train` on the quickstart task: every sample of a prompt whose answer is 3 or 7 crashes."""
    if row["answer"] in ("3", "7"):
        ctypes.string_at(0)
    return 1.0
'''


@pytest.fixture
def bad(tmp_path):
    """ref("segfault") -> "<tmp>/bad_rewards.py:segfault"."""
    path = tmp_path / "bad_rewards.py"
    path.write_text(textwrap.dedent(BAD_REWARDS))
    return lambda fn: f"{path}:{fn}"


def _batch(n, bad_indices):
    """n samples; sample i is worth float(i), and those in bad_indices trigger the fault."""
    rows = [{"bad": i in bad_indices, "value": float(i)} for i in range(n)]
    return [""] * n, [f"completion {i}" for i in range(n)], rows


def _expected(n, bad_indices):
    return [0.0 if i in bad_indices else float(i) for i in range(n)]


def _reward_workers_alive():
    return [p for p in multiprocessing.active_children() if p.name == "rlvr-reward-worker"]


@pytest.mark.parametrize(("fn", "cause"), [
    ("exits", r"the reward called sys\.exit\(3\) \(at .*bad_rewards\.py:\d+ in exits\)"),
    ("hard_exit", r"the reward worker exited with code 1 .*while scoring this sample"),
    ("segfault", r"the reward worker was killed by signal SIGSEGV \(at .*, called from .*bad_rewards\.py:\d+ "
                 r"in segfault\) while scoring this sample"),
], ids=["sys.exit", "os._exit", "segfault"])
def test_exit_and_crash_cost_only_their_sample(bad, caplog, fn, cause):
    # user code is isolated by default: no `isolate` in the spec
    bad_indices = {2, 5}
    with RewardRunner([RewardSpec(bad(fn))], workers=1) as runner:
        res = runner.score(*_batch(8, bad_indices))
        assert res.components[fn].tolist() == _expected(8, bad_indices), caplog.text
        assert res.metrics[f"reward/{fn}/failures"] == 2.0
        assert res.metrics[f"reward/{fn}/timeouts"] == 0.0
        assert re.search(rf"2 failures, 0 timeouts this step .*first, sample 2: {cause}", caplog.text), caplog.text
        # the next step runs on a fresh worker
        assert runner.score(*_batch(3, set())).total.tolist() == [0.0, 1.0, 2.0]


def test_sys_exit_inline_is_a_failure_too(bad):
    with RewardRunner([RewardSpec(bad("exits"), isolate=False)]) as runner:
        res = runner.score(*_batch(4, {1}))
    assert res.components["exits"].tolist() == _expected(4, {1})
    assert res.metrics["reward/exits/failures"] == 1.0


def test_user_code_isolated_by_default_and_inline_on_request(bad):
    batch = _batch(2, set())
    with RewardRunner([RewardSpec(bad("pid"))]) as runner:
        assert os.getpid() not in runner.score(*batch).total.tolist()
    with RewardRunner([RewardSpec(bad("pid"), isolate=False)]) as runner:
        assert runner.score(*batch).total.tolist() == [float(os.getpid())] * 2


@pytest.mark.parametrize("fn", ["c_hang", "blocked_sleep"])
def test_hang_in_c_times_out_only_its_sample_with_the_real_time(bad, caplog, fn):
    # 1 worker, 8 samples in chunks of 2: sample 2 stays in C past its timer, so the worker is killed
    # after timeout_s + 1 s of grace; sample 3, the rest of that chunk, goes to a fresh worker
    with RewardRunner([RewardSpec(bad(fn))], timeout_s=0.5, workers=1) as runner:
        start = time.monotonic()
        res = runner.score(*_batch(8, {2}))
        took = time.monotonic() - start
    assert res.components[fn].tolist() == _expected(8, {2}), caplog.text
    assert res.metrics[f"reward/{fn}/timeouts"] == 1.0 and res.metrics[f"reward/{fn}/failures"] == 0.0
    m = re.search(r"sample 2: timed out after ([\d.]+)s \(limit 0\.5s\); stuck where the timer cannot "
                  r"interrupt it \(C code\?\), so its worker was killed", caplog.text)
    assert m, caplog.text
    assert 1.4 <= float(m[1]) <= took + 0.1, caplog.text  # the measured time, not the configured limit
    assert took < 30, f"the step took {took:.1f}s: the stuck worker was not killed"


def test_inline_timeout_reports_the_time_it_really_took(bad):
    # inline, a call blocked in C overruns its timer until it returns: the cause says how long it took
    spec = RewardSpec(bad("blocked_sleep"), isolate=False, kwargs={"seconds": 1})
    with RewardRunner([spec], timeout_s=0.2, on_failure="abort") as runner, pytest.raises(RewardError) as info:
        runner.score(*_batch(2, {1}))
    m = re.search(r"failed on sample 1: timed out after ([\d.]+)s \(limit 0\.2s\)", str(info.value))
    assert m and float(m[1]) >= 0.95, str(info.value)


def test_three_percent_of_crashing_samples_cost_only_those(bad, caplog):
    # 256 samples, 8 of them (3%) segfault: the other 248 are scored, none lost with a crashed chunk
    bad_indices = {i for i in range(256) if i % 33 == 7}
    assert len(bad_indices) == 8
    with RewardRunner([RewardSpec(bad("segfault"))], workers=2) as runner:
        res = runner.score(*_batch(256, bad_indices))
    assert res.components["segfault"].tolist() == _expected(256, bad_indices), caplog.text
    assert res.metrics["reward/segfault/failures"] == 8.0
    assert res.metrics["reward/segfault/timeouts"] == 0.0
    assert "8 failures, 0 timeouts this step" in caplog.text and "SIGSEGV" in caplog.text


def test_leaking_reward_is_recycled_with_a_warning(bad, caplog):
    with RewardRunner([RewardSpec(bad("rss"))]) as runner:
        fresh_mb = runner.score(*_batch(1, set())).metrics["reward/rss/rss_mb"]
    ceiling = fresh_mb + 120  # each call keeps 50 MB: a worker passes the ceiling on its third sample
    with RewardRunner([RewardSpec(bad("leak"))], workers=1, max_worker_memory_mb=ceiling) as runner:
        res = runner.score(*_batch(10, set()))
        assert res.components["leak"].tolist() == _expected(10, set()), caplog.text
        assert res.metrics["reward/leak/failures"] == 0.0
        assert res.metrics["reward/worker_recycles"] == 3.0, caplog.text
        m = re.search(rf"reward 'leak' \(.*bad_rewards\.py:leak\): its worker reached (\d+) MB, above "
                      rf"reward\.max_worker_memory_mb \({ceiling:g}\), and was replaced by a fresh one \(3 time\(s\) "
                      "this step\\)", caplog.text)
        assert m and int(m[1]) > ceiling, caplog.text


def test_workers_retire_after_max_tasks(bad):
    with RewardRunner([RewardSpec(bad("pid"))], workers=1, max_tasks_per_worker=3) as runner:
        res = runner.score(*_batch(9, set()))
    pids = res.components["pid"].tolist()
    assert len(set(pids)) == 3 and pids[0] == pids[2] != pids[3] == pids[5] != pids[6] == pids[8], pids
    assert res.metrics["reward/worker_recycles"] == 3.0


@pytest.mark.parametrize(("fn", "cause"), [
    ("blocked_sleep", r"timed out after [\d.]+s \(limit 0\.5s\); stuck where the timer cannot interrupt it"),
    ("segfault", r"the reward worker was killed by signal SIGSEGV"),
], ids=["hang", "segfault"])
def test_abort_stops_at_the_first_failure(bad, fn, cause):
    # every sample is bad: abort must raise at the first one, not after every sample's timeout
    # (8 samples x 5 s of blocked sleep = 40 s before; 2 workers, 1.5 s now)
    spec = RewardSpec(bad(fn), kwargs={"seconds": 5} if fn == "blocked_sleep" else {})
    runner = RewardRunner([spec], timeout_s=0.5, on_failure="abort", workers=2)
    start = time.monotonic()
    with runner, pytest.raises(RewardError) as info:
        runner.score(*_batch(8, set(range(8))))
    took = time.monotonic() - start
    message = str(info.value)
    assert took < 10, f"abort took {took:.1f}s: {message}"
    assert re.search(rf"reward '{fn}' \(.*bad_rewards\.py:{fn}\) failed on sample \d: {cause}", message), message
    assert "Completion: 'completion " in message and "reward.on_failure is 'abort'" in message
    assert isinstance(info.value, RlvrError) and isinstance(info.value, RuntimeError)  # a user-facing error
    assert not _reward_workers_alive()


SIGTERM_SCRIPT = """
import json, os, signal, sys, threading
from rlvr.reward import RewardRunner, RewardSpec

def main():
    stops = []
    signal.signal(signal.SIGTERM, lambda *_: stops.append(1))  # as a trainer would: finish the step first
    runner = RewardRunner([RewardSpec(sys.argv[1], isolate=True)], workers=2)
    threading.Timer(0.5, os.killpg, (0, signal.SIGTERM)).start()  # a scheduler signals the whole group
    res = runner.score([""] * 16, ["x"] * 16, [{}] * 16)  # 16 x 0.1 s on 2 workers: signalled mid-step
    print(json.dumps({"stops": len(stops), "pids": res.components["slow_pid"].tolist(),
                      "failures": res.metrics["reward/slow_pid/failures"]}))
    # no runner.close(): leaving must still end the workers, and not hang

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow  # a fresh interpreter imports torch and starts a fork server: ~6 s
def test_sigterm_to_the_process_group_leaves_the_step_whole(bad, tmp_path):
    """Slurm-style SIGTERM to every process of the run, mid-step: the trainer decides when to stop;
    the reward workers finish the step's samples, and end with the trainer (no hang, no orphan)."""
    script = tmp_path / "score_then_exit.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), bad("slow_pid")], capture_output=True, text=True,
                          timeout=60, start_new_session=True, cwd=tmp_path)
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["stops"] == 1 and got["failures"] == 0.0, report
    workers = {int(p) for p in got["pids"]}
    assert len(workers) == 2 and 0 not in workers, report
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), f"reward workers outlived the trainer\n{report}"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The quickstart's tiny model, built by the first `rlvr train` here and reused by the next."""
    return tmp_path_factory.mktemp("models")


def _train(tmp_path, models, *overrides):
    """`python -m rlvr train` on the quickstart with a user reward that segfaults on a fifth of the prompts."""
    rewards = ("[{name: exact}, {name: '%s', weight: 0.0, label: flaky}]"
               % (tmp_path / "bad_rewards.py:segfaults_on_3_and_7"))
    cmd = [sys.executable, "-m", "rlvr", "train", str(ROOT / "recipes" / "quickstart.yaml"),
           f"model.path={models / 'tiny-digits'}", f"run.output_dir={tmp_path / 'run'}", "eval.every=0",
           "eval.at_start=false", "metrics.plot=false", "metrics.sinks=[jsonl]", f"reward.functions={rewards}",
           *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return proc, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


@pytest.mark.slow
def test_rlvr_train_survives_a_crashing_user_reward(bad, tmp_path, models):
    proc, report = _train(tmp_path, models, "run.steps=2")
    assert proc.returncode == 0, report
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/flaky/failures" in r]
    assert [r["step"] for r in steps] == [1, 2], report
    for r in steps:  # 32 prompts x 8 samples: the 8 samples of each bad prompt fail, every other one scores 1
        failures = r["reward/flaky/failures"]
        assert failures > 0 and failures % 8 == 0 and r["reward/flaky/timeouts"] == 0.0, (r, report)
        assert r["reward/flaky/mean"] == (256 - failures) / 256, (r, report)
        assert r["reward/exact/failures"] == 0.0
    assert "killed by signal SIGSEGV" in proc.stderr, report


@pytest.mark.slow
def test_rlvr_train_abort_stops_with_one_clear_error(bad, tmp_path, models):
    proc, report = _train(tmp_path, models, "run.steps=2", "reward.on_failure=abort")
    assert proc.returncode == 1, report
    assert re.search(r"error: reward 'flaky' \(.*bad_rewards\.py:segfaults_on_3_and_7\) failed on sample "
                     r"\d+: the reward worker was killed by signal SIGSEGV", proc.stderr), report
    assert "Traceback" not in proc.stderr, report
