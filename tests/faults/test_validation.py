"""Bad input is caught before anything heavy, and reaches the user as one or a few lines.

Every input here is a real file in tmp_path: a latin-1 encoded jsonl, a plug-in that calls
sys.exit when imported, a constant named as a plug-in, YAML with a key given twice, a derived
recipe over a synthetic base. Most checks call `load_config` in-process (fast); a handful run the
real `python -m rlvr ...` and assert what the user sees (stderr, exit code) and that nothing heavy
happened (the tiny model was never built, no run folder holds metrics or checkpoints).
"""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from rlvr.config import ConfigError, load_config
from rlvr.errors import RlvrError

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path, name: str = "r.yaml", **sections) -> Path:
    """A small valid recipe (tiny model to be built in tmp_path, synthetic data) with `sections` over it."""
    raw = {
        "run": {"name": "t", "output_dir": str(tmp_path / "run"), "steps": 2},
        "model": {"path": str(tmp_path / "model"), "build_tiny": {"characters": "0123456789+=>"}},
        "data": {"train": {"path": "synthetic:succ", "args": {"num_rows": 20, "max_operand": 9}},
                 "chat_template": False},
        "sampling": {"prompts_per_step": 2, "samples_per_prompt": 2},
        "rollout": {"max_new_tokens": 2},
        "reward": {"functions": [{"name": "exact"}]},
        "eval": {"at_start": False},
    }
    for key, value in sections.items():
        merge = isinstance(raw.get(key), dict) and isinstance(value, dict)
        raw[key] = {**raw[key], **value} if merge else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems_of(path: Path, *overrides: str, **checks) -> list[str]:
    checks = {"check_inputs": True, **checks}
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides), **checks)
    return e.value.problems


def rlvr(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real CLI, importing this checkout's rlvr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rlvr", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without library warnings/progress bars: the lines rlvr itself printed for the error."""
    lines = proc.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error: ")), len(lines))
    return lines[start:]


def shown(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_nothing_heavy(tmp_path: Path) -> None:
    """The tiny model was never built and no run wrote metrics or checkpoints."""
    assert not (tmp_path / "model").exists(), "the model was built before the input was checked"
    assert_no_run_output(tmp_path)


def assert_no_run_output(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


# ---- data and model paths ----------------------------------------------------------------------


def test_missing_data_file_and_unknown_synthetic_task(tmp_path):
    r = recipe(tmp_path, data={"train": {"path": "data/train.jsonl"}, "eval": {"path": "synthetic:suc"}})
    got = problems_of(r)
    assert any(p.startswith("data.train.path: data/train.jsonl not found (looked in ") for p in got), got
    assert any(p.startswith("data.eval.path: synthetic:suc: unknown task") and "did you mean 'succ'" in p
               for p in got), got


def test_missing_data_fails_train_before_the_model_is_built(tmp_path):
    r = recipe(tmp_path, data={"train": {"path": "data/train.jsonl"}})
    t0 = time.monotonic()
    proc = rlvr("train", str(r), cwd=tmp_path)
    took = time.monotonic() - t0
    assert proc.returncode == 2, shown(proc)
    lines = error_lines(proc)
    assert len(lines) == 2 and "data.train.path: data/train.jsonl not found" in lines[1], shown(proc)
    assert "Traceback" not in proc.stderr, shown(proc)
    assert took < 60, f"took {took:.0f} s"  # generous: it must not have started training
    assert_nothing_heavy(tmp_path)


def test_missing_model_folder_is_an_error_unless_it_will_be_built_or_is_a_hub_name(tmp_path, monkeypatch):
    for path in ("./models/nope", str(tmp_path / "nope"), "a/b/c"):
        got = problems_of(recipe(tmp_path, model={"path": path, "build_tiny": None}))
        assert got == [f"model.path: {path} not found (looked in {Path.cwd()} and {tmp_path})"], got
    (tmp_path / "models").mkdir()  # models/x where models/ exists here is meant as local too
    got = problems_of(recipe(tmp_path, model={"path": "models/x", "build_tiny": None}))
    assert got and got[0].startswith("model.path: models/x not found"), got
    (tmp_path / "models" / "empty").mkdir()
    empty = str(tmp_path / "models" / "empty")
    got = problems_of(recipe(tmp_path, model={"path": empty, "build_tiny": None}))
    assert got and "a folder without config.json, not a model folder" in got[0], got
    # a hub-style name: accepted (it may be downloaded), but not when the hub is switched off
    hub = recipe(tmp_path, model={"path": "some-org/some-model-not-cached", "build_tiny": None})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    cfg = load_config(hub, check_inputs=True)
    from rlvr.config.preflight import notes

    assert notes(cfg, tmp_path) == [  # said by `config validate` and `train`, as a note
        f"model.path: 'some-org/some-model-not-cached' is not a local folder (looked in {Path.cwd()} and "
        f"{tmp_path}) nor in the hub cache; training will download it from the hub"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = problems_of(hub)
    assert got and "nor in the hub cache, and HF_HUB_OFFLINE is set" in got[0], got
    # model.build_tiny builds it: no problem although it does not exist yet
    load_config(recipe(tmp_path), check_inputs=True)


# ---- a derived recipe's synthetic args ----------------------------------------------------------


def test_derived_recipe_can_drop_its_bases_synthetic_args(tmp_path):
    """The base's data.train.args survived every value a derived recipe could give (a merged `{}`
    kept them, null was a schema error), and `train` then failed after loading the model."""
    recipe(tmp_path, "base.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "1>", "answer": "2"}\n' * 4)
    own = tmp_path / "own.yaml"
    own.write_text("base: base.yaml\ndata: {train: {path: data/train.jsonl}}\n")
    got = problems_of(own)
    assert len(got) == 1 and got[0].startswith(
        "data.train.args: {'num_rows': 20, 'max_operand': 9} only apply to synthetic:<task> sources "
        "(and reasoning-gym:<task>), "
        "but data.train.path is 'data/train.jsonl'"), got
    assert "data.train.args: {}" in got[0], got
    for value in ("{}", "null"):
        own.write_text(f"base: base.yaml\ndata: {{train: {{path: data/train.jsonl, args: {value}}}}}\n")
        cfg = load_config(own, check_inputs=True)
        assert cfg.data.train.args == {} and cfg.data.train.path == "data/train.jsonl"


def test_synthetic_args_are_checked_against_the_generator(tmp_path):
    recipe(tmp_path, "base.yaml")
    own = tmp_path / "own.yaml"
    own.write_text("base: base.yaml\ndata: {train: {path: 'synthetic:succ', split: test, "
                   "args: {nm_rows: 5, test_fraction: 2, split: train}}}\n")
    got = problems_of(own, check_inputs=False)  # no file needed: plain validation catches it
    text = "\n".join(got)
    assert "data.train.args.nm_rows: unknown argument (did you mean 'num_rows'?)" in text, got
    assert "data.train.args.test_fraction: must be in (0, 1), got 2.0" in text, got
    assert "data.train.split: 'test' but data.train.args.split is 'train'" in text, got


# ---- prompts longer than the model's context ----------------------------------------------------

LONG = {"path": "synthetic:succ", "args": {"num_rows": 20, "max_operand": 9, "pad_width": 30}}


def test_prompt_longer_than_context_is_named_by_config_validate(tmp_path):
    """Today: a transformers warning only, and generation past the context (0.09 s -> 8.7 s a step)."""
    r = recipe(tmp_path, model={"build_tiny": {"characters": "0123456789+=>", "max_position_embeddings": 32}},
               data={"train": LONG})
    got = problems_of(r, check_context=True)
    assert len(got) == 1, got
    # succ with pad_width 30: 30 digits + ">" + the BOS = 32 tokens; + 2 new tokens = 34 > 32
    assert got[0].startswith("data.train: row ") and (
        " of synthetic:succ:train is 32 prompt tokens; with rollout.max_new_tokens 2 that is 34 positions, "
        "more than the model's max_position_embeddings (32); 20 of 20 prompts are too long. "
        "Set data.max_prompt_tokens to at most 30") in got[0], got
    assert "or lower rollout.max_new_tokens" in got[0]
    assert not (tmp_path / "model").exists()  # the tokenizer was built in memory, no model


def tool_template_model(folder: Path, positions: int) -> Path:
    """A local model folder (config and tokenizer, no weights) whose chat template shows tools."""
    from transformers import Qwen2Config

    from rlvr.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = ("{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}{% endfor %}"
                         "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
                         "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                         "<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(folder)
    Qwen2Config(vocab_size=len(tok), max_position_embeddings=positions).save_pretrained(folder)
    return folder


def test_the_context_check_counts_the_tools_block_the_prompts_will_show(tmp_path):
    """A tool-using recipe: the chat template renders the env's tool schemas into every prompt
    (data.tool_schemas), so `rlvr config validate` measures the prompts with them, as training does."""
    model = tool_template_model(tmp_path / "model", 160)
    r = recipe(tmp_path, model={"path": str(model)}, env={"name": "calculator"},
               data={"train": {"path": "synthetic:sum", "args": {"num_rows": 20, "max_operand": 9}},
                     "chat_template": True}, rollout={"max_new_tokens": 96, "max_turns": 2})
    assert load_config(r, ["data.tool_schemas=false"], check_inputs=True, check_context=True)
    got = problems_of(r, check_context=True)
    assert len(got) == 1 and got[0].startswith("data.train: row 0 of synthetic:sum"), got
    assert "prompt tokens; with rollout.max_new_tokens 96" in got[0] and "(160)" in got[0], got


def test_an_env_that_fails_to_build_is_named_by_the_context_check(tmp_path):
    (tmp_path / "my_env.py").write_text(textwrap.dedent("""
        class Broken:
            def __init__(self, collection: str = "docs.jsonl"):
                raise FileNotFoundError(f"no collection at {collection}")
    """))
    model = tool_template_model(tmp_path / "model", 160)
    r = recipe(tmp_path, model={"path": str(model)}, env={"name": "my_env.py:Broken"},
               data={"chat_template": True}, rollout={"max_new_tokens": 2, "max_turns": 2})
    assert problems_of(r, check_context=True) == [
        "env: my_env.py:Broken could not be built: FileNotFoundError: no collection at docs.jsonl"]


def test_context_problems_name_eval_keys_and_no_room_at_all():
    from rlvr.config.preflight import context_problems
    from rlvr.types import Prompt

    prompts = [Prompt(uid=f"data/e.jsonl#{i}", text="x", token_ids=[0] * n, answer=None, row={})
               for i, n in enumerate([5, 9, 7])]
    got = context_problems("data.eval", prompts, 4, "eval.max_new_tokens", 12)
    assert len(got) == 1 and got[0].startswith("data.eval: row 1 of data/e.jsonl is 9 prompt tokens; with "
                                               "eval.max_new_tokens 4 that is 13 positions"), got
    assert "1 of 3 prompts" in got[0]
    assert context_problems("data.eval", prompts, 4, "eval.max_new_tokens", 13) == []
    assert context_problems("data.train", prompts, 16, "rollout.max_new_tokens", 16) == [
        "rollout.max_new_tokens: 16 leaves no room for a prompt in the model's max_position_embeddings (16); "
        "lower it"]


@pytest.mark.slow
def test_prompt_longer_than_context_stops_train_before_the_model_loads(tmp_path):
    r = recipe(tmp_path, model={"build_tiny": {"characters": "0123456789+=>", "max_position_embeddings": 32}},
               data={"train": LONG})
    proc = rlvr("train", str(r), cwd=tmp_path)
    assert proc.returncode == 2, shown(proc)
    lines = error_lines(proc)
    assert len(lines) == 2, shown(proc)
    assert "is 32 prompt tokens; with rollout.max_new_tokens 2 that is 34 positions" in lines[1], shown(proc)
    assert "fresh start" not in proc.stdout + proc.stderr, shown(proc)  # printed once the model is loaded
    assert_no_run_output(tmp_path)


# ---- data that is not UTF-8, bad rows ----------------------------------------------------------


def latin1_data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "data" / "latin1.jsonl"
    lines = ['{"prompt": "1>", "answer": "2"}', '{"prompt": "café 2>", "answer": "3"}']
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    return path


def test_non_utf8_data_names_file_line_and_byte(tmp_path):
    latin1_data(tmp_path)
    got = problems_of(recipe(tmp_path, data={"train": {"path": "data/latin1.jsonl", "args": None}}))
    assert got == ["data.train.path: data/latin1.jsonl line 2: not UTF-8 (byte 0xe9 at byte offset 47 of the "
                   "file); re-encode it as UTF-8 (for Latin-1 text: iconv -f latin1 -t utf-8)"], got


def test_non_utf8_data_fails_train_in_one_line(tmp_path):
    latin1_data(tmp_path)
    r = recipe(tmp_path, data={"train": {"path": "data/latin1.jsonl", "args": None}})
    proc = rlvr("train", str(r), cwd=tmp_path)
    assert proc.returncode == 2, shown(proc)
    lines = error_lines(proc)
    assert len(lines) == 2 and "data/latin1.jsonl line 2: not UTF-8" in lines[1], shown(proc)
    assert "UnicodeDecodeError" not in proc.stderr, shown(proc)
    assert_nothing_heavy(tmp_path)


def test_bad_row_reaches_the_user_as_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    rows = ['{"prompt": "1>", "answer": "2"}', '{"question": "2>", "answer": "3"}']
    (tmp_path / "data" / "rows.jsonl").write_text("\n".join(rows) + "\n")
    r = recipe(tmp_path, data={"train": {"path": "data/rows.jsonl", "args": None}})
    got = problems_of(r)
    assert got == ["data.train.path: data/rows.jsonl row 1: missing field 'prompt' "
                   "(fields: question, answer)"], got
    proc = rlvr("config", "validate", str(r), cwd=tmp_path)
    assert proc.returncode == 2 and error_lines(proc)[1:] == [f"  {got[0]}"], shown(proc)


# ---- plug-ins ----------------------------------------------------------------------------------


def test_plugin_attribute_that_is_not_callable(tmp_path):
    (tmp_path / "my.py").write_text("NOT_A_FUNCTION = 3\n")
    got = problems_of(recipe(tmp_path, advantage={"name": "my.py:NOT_A_FUNCTION"}))
    assert got == ["advantage.name: 'my.py:NOT_A_FUNCTION' is an int (3), not a function or class"], got


EXITING_PLUGIN = """
import sys
sys.exit("this plug-in refuses to load")

def estimator(inp):
    raise AssertionError("never imported")
"""


def test_plugin_that_calls_sys_exit_at_import_is_a_problem(tmp_path):
    (tmp_path / "exits.py").write_text(EXITING_PLUGIN)
    got = problems_of(recipe(tmp_path, advantage={"name": "exits.py:estimator"}))  # the test process lives on
    assert got == [f"advantage.name: 'exits.py:estimator': importing {tmp_path / 'exits.py'} called "
                   "sys.exit('this plug-in refuses to load'); a plug-in file must not exit when imported"
                   ], got


def test_plugin_that_calls_sys_exit_at_import_through_the_cli(tmp_path):
    """Today: exit 1 with only the plug-in's own text, no word of which file or key."""
    (tmp_path / "exits.py").write_text(EXITING_PLUGIN)
    r = recipe(tmp_path, advantage={"name": "exits.py:estimator"})
    proc = rlvr("config", "validate", str(r), cwd=tmp_path)
    assert proc.returncode == 2, shown(proc)
    lines = error_lines(proc)
    assert len(lines) == 2 and "exits.py" in lines[1] and "called sys.exit(" in lines[1], shown(proc)
    # Ctrl-C is not swallowed by the plug-in loader: it reaches the top as one line, exit 130
    (tmp_path / "exits.py").write_text("raise KeyboardInterrupt\n")
    proc = rlvr("config", "validate", str(r), cwd=tmp_path)
    assert proc.returncode == 130 and proc.stderr.splitlines() == ["error: interrupted"], shown(proc)


def test_schema_errors_do_not_hide_plugin_problems(tmp_path):
    """Today validation returned after the schema's errors, so the kwarg typo came only on the next try."""
    got = problems_of(recipe(tmp_path, learner={"lr": -1}, advantage={"name": "grpo", "epsilonn": 1},
                             loss={"policy": {"name": "ppo_clip", "clip_lo": 0.1}}), check_inputs=False)
    assert got == ["learner.lr: expected greater than 0, got -1",
                   "advantage.epsilonn: unknown key for GRPO (did you mean 'epsilon'?)",
                   "loss.policy.clip_lo: unknown key for ppo_clip (did you mean 'clip_low'?)"], got


def test_plugins_that_must_go_together(tmp_path):
    r = recipe(tmp_path)
    got = problems_of(r, "advantage.name=delta_l", check_inputs=False)
    assert len(got) == 1 and got[0].startswith(
        "advantage.name: delta_l needs loss.aggregation.name: delta_l (got token_mean)"), got
    load_config(r, ["advantage.name=delta_l", "loss.aggregation.name=delta_l"])
    got = problems_of(r, "sampling.sampler.name=spo", check_inputs=False)
    assert len(got) == 1 and got[0].startswith(
        "sampling.sampler.name: spo needs advantage.name: spo (got grpo)"), got
    load_config(r, ["sampling.sampler.name=spo", "advantage.name=spo"])
    got = problems_of(r, "advantage.name=stratified", check_inputs=False)
    assert len(got) == 1 and got[0].startswith(
        "advantage.name: stratified needs rollout.stratum (got null)"), got
    load_config(r, ["advantage.name=stratified",
                    "rollout.stratum=rlvr.advantage.stratified:count_tool_calls"])


def test_gvm_refuses_strategies_that_shard_gradients(tmp_path, monkeypatch):
    """GVM's stage 1 takes per-sample gradient norms, which need whole gradients on each process:
    fsdp2, zero2 and zero3 are refused before any model loads, named or taken by `auto` from an
    accelerate launch config; on one process fsdp2 is plain single-process training and passes."""
    r = recipe(tmp_path, sampling={"prompts_per_step": 2, "samples_per_prompt": 2, "allocator": {"name": "gvm"}})
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for strategy in ("fsdp2", "zero2", "zero3"):
        got = problems_of(r, f"learner.strategy={strategy}", check_inputs=False)
        assert got == ["sampling.allocator.name: gvm needs whole local gradients (learner.strategy: ddp, or a "
                       f"single process); {strategy} shards them"], got
    load_config(r, ["learner.strategy=ddp"])
    load_config(r)  # auto without an accelerate config: ddp
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    got = problems_of(r, check_inputs=False)
    assert got == ["sampling.allocator.name: gvm needs whole local gradients (learner.strategy: ddp, or a single "
                   "process); fsdp2 shards them (learner.strategy: auto took it from accelerate launch)"], got
    monkeypatch.setenv("WORLD_SIZE", "1")
    load_config(r)


def test_a_user_plugin_declares_its_own_problems(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        def centred(inp):
            raise AssertionError("not called by validation")

        centred.problems = lambda cfg: (
            [] if cfg.sampling.samples_per_prompt > 2 else
            [f"advantage.name: centred needs sampling.samples_per_prompt > 2 "
             f"(got {cfg.sampling.samples_per_prompt})"])
    """))
    r = recipe(tmp_path, advantage={"name": "mine.py:centred"})
    assert problems_of(r, check_inputs=False) == [
        "advantage.name: centred needs sampling.samples_per_prompt > 2 (got 2)"]
    load_config(r, ["sampling.samples_per_prompt=4"])


# ---- YAML --------------------------------------------------------------------------------------


def test_duplicate_yaml_keys_are_errors(tmp_path):
    recipe(tmp_path, "base.yaml")
    r = tmp_path / "dup.yaml"
    r.write_text("base: base.yaml\nlearner: {lr: 1, lr: 2}\nrun: {steps: 3}\nrun: {steps: 4}\n")
    got = problems_of(r, check_inputs=False)
    assert got == ["learner.lr: given twice (line 2, columns 11 and 18); YAML would silently keep the last",
                   "run: given twice (lines 3 and 4); YAML would silently keep the last"], got
    got = problems_of(tmp_path / "base.yaml", "learner={lr: 1, lr: 2}", check_inputs=False)
    assert got == ["learner.lr: given twice (line 1, columns 2 and 9); YAML would silently keep the last"
                   ], got
    # a merge key may be overridden: that is what it is for
    r.write_text("base: base.yaml\nx: &d {lr: 1.0e-4}\nlearner: {<<: *d, lr: 2.0e-4}\n")
    got = problems_of(r, check_inputs=False)
    assert got == ["x: unknown key"], got  # only the anchor's own key is a problem, not the override


# ---- the CLI's error lines ---------------------------------------------------------------------


def test_errors_are_subclasses_with_exit_codes():
    from rlvr.data import DataError
    from rlvr.registry import RegistryError

    for cls in (ConfigError, DataError, RegistryError):
        assert issubclass(cls, RlvrError) and cls.exit_code == 2
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


def test_unexpected_errors_are_one_line_with_a_debug_hint(tmp_path):
    proc = rlvr("plot", str(tmp_path / "no_run"), cwd=tmp_path)
    assert proc.returncode == 1, shown(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, shown(proc)
    assert lines[0].startswith("error: FileNotFoundError: ") and "no_run" in lines[0], shown(proc)
    hint = f"(rerun with `rlvr --debug plot {tmp_path / 'no_run'}` for the traceback)"
    assert lines[1] == hint, shown(proc)
    debug = rlvr("--debug", "plot", str(tmp_path / "no_run"), cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr, shown(debug)
