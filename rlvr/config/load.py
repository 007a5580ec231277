"""Read a recipe, apply `key.sub=value` overrides, and validate it before anything heavy loads.

All problems are collected and reported together; each names the full dotted key:

    model.lr: unknown key (did you mean 'learner.lr'?)
    learner.lr: expected a number greater than 0, got -1
    advantage.epsilon: expected a valid number, got 'tiny'
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from rlvr.config.schema import Config, Plugin
from rlvr.registry import (
    ADVANTAGE,
    AGGREGATION,
    ALLOCATOR,
    POLICY_LOSS,
    SAMPLER,
    Registry,
    RegistryError,
    load_object,
    type_hints,
)


class ConfigError(ValueError):
    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {path}"], str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"invalid YAML: {e}"], str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], str(path))
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for mappings (lists and values are replaced whole)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe with its `base:` chain resolved: `base: quickstart.yaml` (relative to the recipe)
    loads that recipe first and applies this one's keys over it."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError([f"base: recipes include each other ({' -> '.join(p.name for p in (*_seen, path))})"],
                          str(path))
    raw = load_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(load_recipe(path.parent / base, (*_seen, path)), raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`learner.lr=1e-5`, `reward.functions.0.weight=2`, `rollout.stop=["\\n"]` (values are YAML)."""
    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r}: expected key.sub=value")
            continue
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        value = yaml.safe_load(text) if text.strip() else None
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"{'.'.join(parts[:i + 1])}: no list item {part!r} to override")
                    break
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    problems.append(f"{'.'.join(parts[:i + 1])}: is a value, cannot set {key}")
                    break
        else:
            last = parts[-1]
            if isinstance(node, list):
                if last.isdigit() and int(last) < len(node):
                    node[int(last)] = value
                else:
                    problems.append(f"{key}: no list item {last!r} to override")
            else:
                node[last] = value
    if problems:
        raise ConfigError(problems, "overrides")
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that owns the last key of `loc` (for 'did you mean')."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (inspect.isclass(model) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
        while typing.get_origin(model) in (typing.Union, list, types.UnionType):
            args = [a for a in typing.get_args(model) if a is not type(None)]
            model = args[0] if args else None
    return model if inspect.isclass(model) and issubclass(model, BaseModel) else None


def _all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name in model.model_fields:
        keys.append(prefix + name)
        sub = _model_at((*(prefix.rstrip(".").split(".") if prefix else ()), name, "x"))
        if sub is not None and sub is not Plugin:
            keys.extend(_all_keys(sub, prefix + name + "."))
    return keys


def _explain(err: dict[str, Any]) -> str:
    key = _dotted(err["loc"])
    if err["type"] == "extra_forbidden":
        owner = _model_at(err["loc"])
        name = str(err["loc"][-1])
        hint = difflib.get_close_matches(name, list(owner.model_fields) if owner else [], n=1)
        if not hint:  # maybe it belongs to another section
            hint = difflib.get_close_matches(name, _all_keys(), n=1, cutoff=0.8) or [
                k for k in _all_keys() if k.endswith("." + name)][:1]
        return f"{key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return f"{key}: expected {msg}, got {err.get('input')!r}"


def plugin_kwargs_problems(key: str, obj: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    """Check a plug-in's YAML kwargs against its signature and annotations.

    Classes are checked against __init__; functions against their keyword parameters (the
    leading positional parameters without defaults are the data the seam passes in).
    Parameters named in CONTEXT_ARGS are filled by rlvr and may not be set in YAML.
    """
    from rlvr.plugins import CONTEXT_ARGS

    sig = inspect.signature(obj)
    params = list(sig.parameters.values())
    if not inspect.isclass(obj):
        while params and params[0].default is inspect.Parameter.empty and params[0].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            params.pop(0)
    by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    hints = type_hints(obj)
    problems = []
    for name, value in kwargs.items():
        if name in CONTEXT_ARGS:
            problems.append(f"{key}.{name}: set by rlvr from the rest of the recipe, not here")
            continue
        if name not in by_name:
            if not open_kwargs:
                hint = difflib.get_close_matches(name, list(by_name), n=1)
                accepted = ", ".join(by_name) or "none"
                problems.append(f"{key}.{name}: unknown key for {getattr(obj, '__name__', obj)}"
                                + (f" (did you mean {hint[0]!r}?)" if hint else f"; accepted: {accepted}"))
            continue
        if name in hints:
            try:
                TypeAdapter(hints[name]).validate_python(value)
            except ValidationError as e:
                for sub in e.errors():
                    msg = sub["msg"].removeprefix("Input should be ")
                    problems.append(f"{key}.{name}: expected {msg}, got {value!r}")
    for name, p in by_name.items():
        if p.default is inspect.Parameter.empty and name not in kwargs and name not in CONTEXT_ARGS:
            problems.append(f"{key}.{name}: required by {getattr(obj, '__name__', obj)} but missing")
    return problems


PLUGIN_SECTIONS: list[tuple[tuple[str, ...], Registry]] = [
    (("sampling", "sampler"), SAMPLER),
    (("sampling", "allocator"), ALLOCATOR),
    (("advantage",), ADVANTAGE),
    (("loss", "policy"), POLICY_LOSS),
    (("loss", "aggregation"), AGGREGATION),
]


def _plugin_problems(cfg: Config, base_dir: str | Path | None) -> list[str]:
    import rlvr.plugins  # noqa: F401  (registers the built-ins)

    problems = []
    for path, registry in PLUGIN_SECTIONS:
        section: Any = cfg
        for part in path:
            section = getattr(section, part)
        key = ".".join(path)
        try:
            obj = registry.get(section.name, base_dir)
        except RegistryError as e:
            problems.append(f"{key}.name: {e}")
            continue
        problems += plugin_kwargs_problems(key, obj, section.kwargs)
    return problems


def _cross_problems(cfg: Config, base_dir: str | Path | None = None) -> list[str]:
    problems = []
    if cfg.eval.samples and any(k > cfg.eval.samples for k in cfg.eval.ks):
        problems.append(f"eval.ks: every k must be <= eval.samples ({cfg.eval.samples}), got {cfg.eval.ks}")
    if cfg.eval.samples == 0 and cfg.eval.ks != [1]:
        problems.append("eval.ks: pass@k needs eval.samples >= max(k), but eval.samples is 0")
    if (cfg.eval.every or cfg.eval.at_start) and cfg.data.eval is None:
        problems.append("data.eval: required when eval.every > 0 or eval.at_start is true")
    if cfg.sampling.dynamic.refill and not cfg.sampling.dynamic.filter_zero_variance:
        problems.append("sampling.dynamic.refill: needs sampling.dynamic.filter_zero_variance: true")
    if cfg.rollout.stratum is not None:
        try:
            load_object(cfg.rollout.stratum, base_dir)
        except RegistryError as e:
            problems.append(f"rollout.stratum: {e}")
    if cfg.data.prompt_field is None and cfg.data.prompt_template is None:
        problems.append("data.prompt_field: set it or data.prompt_template")
    if cfg.learner.strategy in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"learner.strategy: {cfg.learner.strategy} needs deepspeed (pip install -e .[deepspeed])")
    n = cfg.sampling.prompts_per_step * cfg.sampling.samples_per_prompt
    if cfg.learner.mini_batches_per_step > n:
        problems.append(f"learner.mini_batches_per_step: {cfg.learner.mini_batches_per_step} is more than the "
                        f"{n} samples of a step")
    return problems


def _reward_problems(cfg: Config, base_dir: str | Path | None) -> list[str]:
    from rlvr.reward import check_specs

    return check_specs(reward_specs(cfg), base_dir=base_dir, accuracy=cfg.reward.accuracy)


def reward_specs(cfg: Config) -> list[Any]:
    from rlvr.reward import RewardSpec

    return [RewardSpec(**f.model_dump()) for f in cfg.reward.functions]


def _default_plugin_names(raw: dict[str, Any]) -> dict[str, Any]:
    """A plug-in section given without `name` (e.g. only `advantage.epsilon=...` overridden) keeps
    the default plug-in's name."""
    raw = copy.deepcopy(raw)
    defaults = Config.model_fields
    for path, _ in PLUGIN_SECTIONS:
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        section = node.get(path[-1]) if isinstance(node, dict) else None
        if isinstance(section, dict) and "name" not in section:
            default: Any = defaults[path[0]].get_default(call_default_factory=True)
            for part in path[1:]:
                default = getattr(default, part)
            section["name"] = default.name
    return raw


def validate(raw: dict[str, Any], base_dir: str | Path | None = None, source: str = "recipe") -> Config:
    raw = _default_plugin_names(raw)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_explain(err) for err in e.errors()], source) from None
    problems = _plugin_problems(cfg, base_dir) + _reward_problems(cfg, base_dir) + _cross_problems(cfg, base_dir)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    raw = apply_overrides(load_recipe(path), overrides or [])
    return validate(raw, base_dir=Path(path).parent, source=str(path))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
