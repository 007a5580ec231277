"""Checks of what a recipe points at, before anything heavy: the model folder, the data, and
whether the prompts fit the model's context.

`rlvr config validate` runs all of them; `rlvr train` runs the file checks before it starts and
the context check right after the tokenizer loads, before the model (`check_prompt_lengths`).
Each problem names the full key to change, like the schema's problems:

    model.path: ./models/qwen not found (looked in /home/me/work and recipes)
    data.train.path: data/train.jsonl line 2: not UTF-8 (byte 0xe9 at byte offset 49 of the file); ...
    data.train: row 7 of data/train.jsonl is 700 prompt tokens; with rollout.max_new_tokens 256 that is
      956 positions, more than the model's max_position_embeddings (512); ...

Model names: a path that exists locally must be a model folder (config.json). A path that does
not exist is an error when it is clearly meant as local: it starts with `/`, `./`, `../` or `~`,
cannot be a hub repo id (`name` or `org/name`), or its first folder exists here (`models/x`
where `models/` exists). Anything else is taken as a hub name: fine when it is in the local hub
cache, or when the hub may be reached; an error when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from rlvr.config.schema import Config, DataConfig, DatasetConfig, ModelConfig
from rlvr.types import Prompt

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
# config fields that hold a model's context length, by architecture family
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


# ---- paths -----------------------------------------------------------------------------------


def _candidates(path: str, base_dir: str | Path | None) -> list[Path]:
    """Where a relative path may live: the working directory, then the recipe's folder."""
    p = Path(path).expanduser()
    out = [p]
    if base_dir is not None and not p.is_absolute():
        out.append(Path(base_dir) / p)
    return out


def find_local(path: str, base_dir: str | Path | None) -> Path | None:
    """The existing file or folder `path` names (cwd first, then `base_dir`), or None."""
    return next((p for p in _candidates(path, base_dir) if p.exists()), None)


def looks_local(path: str, base_dir: str | Path | None) -> bool:
    """Whether a path that does not exist was meant as a local one (see the module docstring)."""
    if path.startswith(("/", "./", "../", "~", ".\\")) or (os.sep != "/" and os.sep in path):
        return True
    if not _HUB_ID.match(path):
        return True
    first = path.split("/", 1)[0]
    return "/" in path and any(p.is_dir() for p in _candidates(first, base_dir))


def _looked_in(base_dir: str | Path | None) -> str:
    """The folders a relative path was looked for in, for a message."""
    cwd = Path.cwd()
    if base_dir is None or Path(base_dir).resolve() == cwd.resolve():
        return str(cwd)
    return f"{cwd} and {base_dir}"


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def model_path_problems(key: str, path: str, base_dir: str | Path | None) -> list[str]:
    """Problems of one model reference (`model.path`, `model.ref_path`)."""
    found = find_local(path, base_dir)
    if found is not None:
        if found.is_dir() and (found / "config.json").is_file():
            return []
        what = "a file" if found.is_file() else "a folder without config.json"
        return [f"{key}: {found} is {what}, not a model folder (a transformers save_pretrained folder)"]
    where = _looked_in(base_dir)
    if looks_local(path, base_dir):
        return [f"{key}: {path} not found (looked in {where})"]
    if not _in_hub_cache(path) and _hub_offline():
        return [f"{key}: {path!r} is not a local folder (looked in {where}) nor in the hub cache, "
                "and HF_HUB_OFFLINE is set"]
    return []  # a hub name: cached, or downloaded when training starts


def notes(cfg: Config, base_dir: str | Path | None) -> list[str]:
    """Things that are not errors but change what happens: a model name that is neither a local
    folder nor in the hub cache will be downloaded (a typo of a local path shows up here)."""
    out = []
    for key, path in (("model.path", cfg.model.path), ("model.ref_path", cfg.model.ref_path)):
        if path is None or (key == "model.path" and cfg.model.build_tiny is not None):
            continue
        if find_local(path, base_dir) is None and not looks_local(path, base_dir) and not _in_hub_cache(path):
            out.append(f"{key}: {path!r} is not a local folder (looked in {_looked_in(base_dir)}) nor in the "
                       "hub cache; training will download it from the hub")
    return out


def _resumable(cfg: Config) -> bool:
    """A checkpoint the run will resume from exists, so the policy comes from it, not model.path."""
    resume = cfg.run.resume
    if resume == "never":
        return False
    if resume != "auto":
        return Path(resume).exists()
    ckpts = Path(cfg.run.output_dir) / "checkpoints"
    return ckpts.is_dir() and any(p.is_dir() and p.name.startswith("step_") for p in ckpts.iterdir())


def model_problems(cfg: Config, base_dir: str | Path | None) -> list[str]:
    """model.path (unless model.build_tiny builds it, or a checkpoint supplies the policy) and
    model.ref_path (when a KL term loads a reference model)."""
    m: ModelConfig = cfg.model
    needs_ref = cfg.loss.kl.coef > 0
    problems = []
    # LoRA checkpoints hold the adapter only: the base weights always come from model.path
    policy_needed = not _resumable(cfg) or (needs_ref and m.ref_path is None) or m.lora is not None
    if m.build_tiny is None and policy_needed:
        problems += model_path_problems("model.path", m.path, base_dir)
    if m.ref_path is not None and needs_ref:
        problems += model_path_problems("model.ref_path", m.ref_path, base_dir)
    return problems


# ---- data ------------------------------------------------------------------------------------


def source_problems(key: str, ds: DatasetConfig) -> list[str]:
    """What is wrong with one dataset entry without reading anything: an unknown synthetic or
    reasoning-gym task, arguments its generator does not take, or `args` on a source that generates
    nothing (the usual cause: a `base:` recipe's synthetic args under a derived recipe's own file)."""
    from rlvr.data import reasoning_gym
    from rlvr.data.synthetic import arg_problems

    if ds.path.startswith(reasoning_gym.PREFIX):
        task = ds.path.removeprefix(reasoning_gym.PREFIX)
        return [f"{key}.{where}: {ds.path}: {msg}" if where == "path" else f"{key}.{where}: {msg}"
                for where, msg in reasoning_gym.arg_problems(task, ds.args, ds.split)]
    if not ds.path.startswith("synthetic:"):
        if ds.args:
            return [f"{key}.args: {ds.args} only apply to synthetic:<task> sources (and reasoning-gym:<task>), "
                    f"but {key}.path is {ds.path!r}; inherited from a base: recipe? drop them with {key}.args: {{}}"]
        return []
    task = ds.path.removeprefix("synthetic:")
    problems = [f"{key}.path: synthetic:{task}: {msg}" if not arg else f"{key}.args.{arg}: {msg}"
                for arg, msg in arg_problems(task, ds.args)]
    if ds.split is not None and "split" in ds.args and ds.args["split"] != ds.split:
        problems.append(f"{key}.split: {ds.split!r} but {key}.args.split is {ds.args['split']!r}")
    return problems


def read_problems(key: str, ds: DatasetConfig, data: DataConfig, base_dir: str | Path | None) -> list[str]:
    """Read one dataset as training will (files, generated rows; hub datasets are left to training)
    and check every row's prompt and answer fields; at most one problem, naming file and row."""
    from rlvr.data import DataError, check_rows, load_rows

    path = ds.path
    if not path.startswith(("synthetic:", "reasoning-gym:")):
        found = find_local(path, base_dir)
        if found is None:
            if Path(path).suffix.lower() in _DATA_SUFFIXES or looks_local(path, base_dir):
                return [f"{key}.path: {path} not found (looked in {_looked_in(base_dir)})"]
            return []  # a hub dataset: read when training starts
        if found.is_dir():
            return []  # a datasets folder: `datasets` reads it when training starts
    try:
        source, rows = load_rows(path, split=ds.split, base_dir=base_dir, synthetic_args=ds.args or None)
        if ds.limit is not None:
            rows = rows[: ds.limit]
        check_rows(rows, source, prompt_field=data.prompt_field, prompt_template=data.prompt_template,
                   answer_field=data.answer_field, on_bad_row=data.on_bad_row)
    except DataError as e:
        return [f"{key}.path: {e}"]
    return []


def data_problems(data: DataConfig, base_dir: str | Path | None, *, read: bool) -> list[str]:
    """`source_problems` of data.train and data.eval, and with `read` their `read_problems`."""
    problems = []
    for key, ds in (("data.train", data.train), ("data.eval", data.eval)):
        if ds is None:
            continue
        found = source_problems(key, ds)
        problems += found
        if read and not found:
            problems += read_problems(key, ds, data, base_dir)
    return problems


# ---- context length --------------------------------------------------------------------------


def model_context_length(model_config: Any) -> int | None:
    """The longest sequence (prompt + response) a transformers config allows, or None if unstated."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for field in _CONTEXT_FIELDS:
        value = getattr(text, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_problems(key: str, prompts: list[Prompt], max_new_tokens: int, new_tokens_key: str,
                     max_positions: int) -> list[str]:
    """The prompts of one dataset whose tokens plus `max_new_tokens` exceed `max_positions`.

    Past the context a model runs on positions it never learned (transformers only warns) and
    generation slows sharply, so this is an error naming the longest row and what to change.
    Example: 43-token prompts, 4 new tokens, context 32 -> one problem naming row and lengths.
    """
    if max_new_tokens >= max_positions:
        return [f"{new_tokens_key}: {max_new_tokens} leaves no room for a prompt in the model's "
                f"max_position_embeddings ({max_positions}); lower it"]
    too_long = [p for p in prompts if len(p.token_ids) + max_new_tokens > max_positions]
    if not too_long:
        return []
    worst = max(too_long, key=lambda p: len(p.token_ids))
    source, _, row = worst.uid.rpartition("#")
    n = len(worst.token_ids)
    room = max_positions - max_new_tokens
    return [f"{key}: row {row} of {source} is {n} prompt tokens; with {new_tokens_key} {max_new_tokens} that "
            f"is {n + max_new_tokens} positions, more than the model's max_position_embeddings "
            f"({max_positions}); {len(too_long)} of {len(prompts)} prompts are too long. Set "
            f"data.max_prompt_tokens to at most {room} (longer rows are then rejected, or dropped with "
            f"data.on_bad_row: skip) or lower {new_tokens_key}"]


def prompt_length_problems(cfg: Config, max_positions: int, train: list[Prompt],
                           evals: list[Prompt]) -> list[str]:
    """`context_problems` of the training prompts and of the evaluated prompts."""
    problems = context_problems("data.train", train, cfg.rollout.max_new_tokens, "rollout.max_new_tokens",
                                max_positions)
    if evals and cfg.data.eval is not None:
        e = cfg.eval
        new, new_key = ((e.max_new_tokens, "eval.max_new_tokens") if e.max_new_tokens is not None
                        else (cfg.rollout.max_new_tokens, "rollout.max_new_tokens"))
        if new < max_positions or not problems:  # "no room" is said once
            problems += context_problems("data.eval", evals[: e.max_prompts], new, new_key, max_positions)
    return problems


def check_prompt_lengths(cfg: Config, model_path: str | Path, train: list[Prompt], evals: list[Prompt],
                         source: str = "recipe") -> None:
    """Raise ConfigError when a prompt plus its new tokens does not fit the model's context
    (called by training right after the tokenizer and prompts load, before the model)."""
    from transformers import AutoConfig

    from rlvr.config.load import ConfigError

    max_positions = model_context_length(AutoConfig.from_pretrained(str(model_path)))
    if max_positions is None:
        return
    problems = prompt_length_problems(cfg, max_positions, train, evals)
    if problems:
        raise ConfigError(problems, source)


def env_context(cfg: Config, base_dir: str | Path | None) -> dict[str, Any]:
    """What an environment's constructor may take besides its own `env:` settings (the same for
    training, `rlvr eval` and this check)."""
    return {"base_dir": base_dir, "seed": cfg.run.seed, "samples_per_prompt": cfg.sampling.samples_per_prompt,
            "prompts_per_step": cfg.sampling.prompts_per_step, "max_new_tokens": cfg.rollout.max_new_tokens}


def tool_schemas(cfg: Config, env: Any) -> list[dict[str, Any]] | None:
    """The JSON schemas of the environment's tools for the chat template, when `data.tool_schemas`."""
    schemas = getattr(env, "tool_schemas", None)
    return schemas() or None if cfg.data.tool_schemas and callable(schemas) else None


def _prompt_tools(cfg: Config, base_dir: str | Path | None) -> list[dict[str, Any]] | None:
    """The tools training's prompts will show, from the env built as training builds it."""
    if cfg.env is None or not cfg.data.tool_schemas:
        return None
    from rlvr.registry import build_plugin

    env = build_plugin(cfg.env.target, cfg.env.kwargs, env_context(cfg, base_dir))
    try:
        return tool_schemas(cfg, env)
    finally:
        close = getattr(env, "close", None)
        if callable(close):
            close()


def local_context_problems(cfg: Config, base_dir: str | Path | None) -> list[str]:
    """The context check for `rlvr config validate`, when the tokenizer and the model's config can
    be had without downloading or building anything heavy: a local (or hub-cached) model folder,
    or the tiny model `model.build_tiny` would build (its tokenizer is built in memory). Otherwise
    nothing is checked here; training checks after its tokenizer loads. With an env whose tools the
    prompts show (`data.tool_schemas`), the env is built to render them, as training does."""
    loaded = _tokenizer_and_context(cfg, base_dir)
    if loaded is None:
        return []
    tokenizer, max_positions = loaded
    from rlvr.data import DataError, build_prompts, load_rows

    try:
        tools = _prompt_tools(cfg, base_dir)
    except Exception as e:  # the env's own error, named; training would meet it first thing
        assert cfg.env is not None  # only a configured env is built
        return [f"env: {cfg.env.name} could not be built: {type(e).__name__}: {e}"]
    sets = []
    for ds in (cfg.data.train, cfg.data.eval):
        if ds is None:
            sets.append([])
            continue
        d = cfg.data
        try:
            source, rows = load_rows(ds.path, split=ds.split, base_dir=base_dir,
                                     synthetic_args=ds.args or None)
            prompts, _ = build_prompts(
                rows[: ds.limit] if ds.limit is not None else rows, source, tokenizer,
                prompt_field=d.prompt_field, prompt_template=d.prompt_template,
                system_prompt=d.system_prompt, chat_template=d.chat_template, answer_field=d.answer_field,
                max_prompt_tokens=d.max_prompt_tokens, on_bad_row=d.on_bad_row, tools=tools)
        except DataError as e:
            return [f"data: {e}"]
        sets.append(prompts)
    return prompt_length_problems(cfg, max_positions, sets[0], sets[1])


def _tokenizer_and_context(cfg: Config, base_dir: str | Path | None) -> tuple[Any, int] | None:
    m = cfg.model
    found = find_local(m.path, base_dir)
    if m.build_tiny is not None and not Path(m.path).exists():
        from rlvr.models.tiny import build_tiny_tokenizer

        t = m.build_tiny
        return build_tiny_tokenizer(sys.maxsize, t.characters), t.max_position_embeddings
    location = str(found) if found is not None else m.path
    if found is None and not _in_hub_cache(m.path):
        return None
    try:
        from transformers import AutoConfig, AutoTokenizer

        max_positions = model_context_length(AutoConfig.from_pretrained(location, local_files_only=True))
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    except Exception:  # unreadable here: training reports it with its own message
        return None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = sys.maxsize  # no "longer than the maximum" warning: this check says it
    return (tokenizer, max_positions) if max_positions is not None else None
