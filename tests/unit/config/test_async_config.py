"""What asynchronous training refuses at validation, each message naming the key to change."""

import pytest

from rlvr.config import ConfigError, apply_overrides, validate
from rlvr.run.build import make_rollout_correction, old_is_behaviour

pytestmark = getattr(pytest.mark, "async")  # a keyword in Python, so by name

BASE = {
    "model": {"path": "does/not/matter"},
    "data": {"train": {"path": "synthetic:succ"}},
    "reward": {"functions": [{"name": "exact"}]},
    "eval": {"at_start": False},
}


def problems(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        validate(apply_overrides(BASE, list(overrides)))
    return "\n".join(e.value.problems)


def test_staleness_needs_disaggregated_workers():
    text = problems("rollout.max_staleness=1")
    assert "rollout.max_staleness: 1 needs rollout.mode: disaggregated" in text


def test_plugins_that_work_before_each_step_need_synchronous_steps():
    text = problems("rollout.mode=disaggregated", "rollout.max_staleness=2", "sampling.sampler={name: vas}")
    assert "sampling.sampler.name: vas has a refresh hook" in text and "rollout.max_staleness: 0" in text
    # the same plug-in is fine at k = 0: the disaggregated run is then the synchronous one
    validate(apply_overrides(BASE, ["rollout.mode=disaggregated", "rollout.max_staleness=0",
                                    "sampling.sampler={name: vas}"]))


def test_worker_urls_are_vllm_servers():
    text = problems("rollout.mode=disaggregated", "rollout.workers.urls=[http://10.0.0.2:8100]")
    assert "rollout.workers.urls" in text and "rollout.engine: vllm" in text


def test_worker_gpus_one_device_list_per_started_worker():
    vllm = ["rollout.mode=disaggregated", "rollout.engine=vllm", "rollout.workers.num=2",
            "rollout.vllm.tensor_parallel_size=2"]
    validate(apply_overrides(BASE, [*vllm, 'rollout.workers.gpus=["4,5", "6,7"]']))
    text = problems(*vllm, 'rollout.workers.gpus=["4,5", "5,6", "7"]')
    assert "rollout.workers.gpus: 3 entries for rollout.workers.num: 2" in text
    assert "rollout.workers.gpus[2]: '7' has 1 device(s); each worker needs rollout.vllm.tensor_parallel_size: 2" \
        in text
    assert "rollout.workers.gpus: device(s) 5 given to more than one worker" in text
    assert "is not a comma-separated list" in problems(*vllm, 'rollout.workers.gpus=["cuda:0,1", "2,3"]')
    assert "this recipe has none" in problems('rollout.workers.gpus=["0"]')  # colocated: nothing to place
    assert "run where they were started" in problems(
        "rollout.mode=disaggregated", "rollout.engine=vllm", "rollout.workers.urls=[http://n7:8100]",
        'rollout.workers.gpus=["0"]')


def test_started_workers_get_their_devices_ports_and_seeds(tmp_path, monkeypatch):
    from rlvr.rollout import remote
    from rlvr.run.build import worker_spec

    cfg = validate(apply_overrides(BASE, ["rollout.mode=disaggregated", "rollout.engine=vllm",
                                          "rollout.workers.num=2", "rollout.vllm.tensor_parallel_size=2",
                                          'rollout.workers.gpus=["4,5", "6,7"]', "rollout.vllm.dtype=float32",
                                          "run.seed=3"]))
    launched = []
    monkeypatch.setattr(remote.WorkerServer, "launch", lambda self: launched.append(self.spec))
    monkeypatch.setattr(remote.WorkerServer, "wait_ready", lambda self: None)
    monkeypatch.setattr(remote, "RemoteEngine", lambda servers, *a, **k: servers)
    spec = worker_spec(cfg, None, model_path="m", port=8100)
    remote.start_workers(spec, None, num=2, gpus=cfg.rollout.workers.gpus, log_dir=str(tmp_path))
    assert [(s.port, s.seed, s.gpus, s.tensor_parallel_size, s.dtype) for s in launched] == [
        (8100, 3, "4,5", 2, "float32"), (8101, 4, "6,7", 2, "float32")]
    from rlvr.rollout.workers import server_command

    assert server_command(launched[1])[1]["CUDA_VISIBLE_DEVICES"] == "6,7"


def test_bad_values_name_the_key():
    text = problems("rollout.mode=split", "rollout.stale=keep", "rollout.max_staleness=-1")
    for key in ("rollout.mode", "rollout.stale", "rollout.max_staleness"):
        assert key in text, (key, text)


@pytest.mark.parametrize("mode,k,policy,behaviour", [
    ("colocated", 0, "auto", False),
    ("disaggregated", 0, "auto", False),  # k = 0 is the synchronous run: ratio 1 against the learner
    ("disaggregated", 1, "auto", True),
    ("disaggregated", 1, "learner", False),
    ("colocated", 0, "behaviour", True),
])
def test_old_policy_resolution(mode, k, policy, behaviour):
    cfg = validate(apply_overrides(BASE, [f"rollout.mode={mode}", f"rollout.max_staleness={k}",
                                          f"loss.old_policy={policy}"]))
    assert old_is_behaviour(cfg) is behaviour
    # against the behaviour policy the ratio already corrects for it: no separate importance weights
    if behaviour:
        assert make_rollout_correction(cfg) is None
