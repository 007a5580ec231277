"""Read a recipe, apply `key.sub=value` overrides, and validate it before anything heavy loads.

All problems are collected and reported together; each names the full dotted key:

    model.lr: unknown key (did you mean 'learner.lr'?)
    learner.lr: expected a number greater than 0, got -1
    advantage.epsilon: expected a valid number, got 'tiny'
    advantage.name: delta_l needs loss.aggregation.name: delta_l (got token_mean)
    learner.lr: given twice (lines 3 and 5); YAML would silently keep the last

Schema errors do not hide the others: plug-in sections, rewards and data sources are checked
from the raw recipe too. With `check_inputs` the model folder and data files must exist and read
(see rlvr/config/preflight.py); with `check_context` the prompts must fit the model's context.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from rlvr.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    Plugin,
    RewardConfig,
    RunConfig,
)
from rlvr.errors import RlvrError
from rlvr.registry import (
    ADVANTAGE,
    AGGREGATION,
    ALLOCATOR,
    CONTEXT_ARGS,
    ENV,
    POLICY_LOSS,
    SAMPLER,
    Registry,
    RegistryError,
    declared_problems,
    load_callable,
    type_hints,
)


class ConfigError(RlvrError, ValueError):
    """The recipe is wrong; `problems` lists every problem found, each naming its full key.

    Exit code 2 from the CLI: nothing ran. Still a ValueError for code that caught that before.
    """

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key given twice.

    Plain YAML keeps the last of two equal keys without a word, so `learner: {lr: 1, lr: 2}` would
    train with 2 while the author reads 1. Every duplicate of the document is collected (named by
    its full dotted key and both lines) and raised together as DuplicateKeys once it is read.
    Keys brought in by a `<<:` merge may be overridden: that is what merging is for.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        """The document's data; raises DuplicateKeys naming every repeated key (dotted path, line)."""
        self._paths: dict[int, str] = {}
        self._duplicates: list[tuple[int, int, str]] = []  # (line, column) of the repeat, problem
        _name_mappings(node, "", self._paths)
        data = super().construct_document(node)
        if self._duplicates:
            raise DuplicateKeys([problem for *_, problem in sorted(self._duplicates)])
        return data

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """One mapping, noting each key that appears twice in it instead of keeping the last silently."""
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not key_node:
                prefix, mark = self._paths.get(id(node), ""), key_node.start_mark
                self._duplicates.append((mark.line, mark.column, f"{prefix}{key}: given twice "
                                         f"({_where(first, key_node)}); YAML would silently keep the last"))
        return super().construct_mapping(node, deep=deep)


class DuplicateKeys(yaml.YAMLError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _name_mappings(node: yaml.Node, prefix: str, out: dict[int, str]) -> None:
    """Record the dotted-key prefix ("learner.") of every mapping node under `node`."""
    if isinstance(node, yaml.MappingNode):
        out.setdefault(id(node), prefix)
        for key_node, value in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            _name_mappings(value, f"{prefix}{name}.", out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _name_mappings(item, f"{prefix.rstrip('.')}[{i}].", out)


def _where(first: yaml.Node, second: yaml.Node) -> str:
    a, b = first.start_mark, second.start_mark
    if a.line == b.line:
        return f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}"
    return f"lines {a.line + 1} and {b.line + 1}"


def parse_yaml(text: str) -> Any:
    """YAML text as Python data, refusing duplicate keys (RecipeLoader)."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass: no arbitrary objects


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file's raw mapping; a missing file, bad YAML or repeated keys raise ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {path}"], str(path))
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeys as e:
        raise ConfigError(e.problems, str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 (byte offset {e.start})"], str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"invalid YAML: {e}"], str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], str(path))
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for mappings (lists and values are replaced whole).

    An empty mapping replaces: `args: {}` in a derived recipe removes the base's arguments (merged,
    it would keep them all, and no value could get rid of them).
    """
    out = dict(base)
    for k, v in top.items():
        merge = isinstance(v, dict) and v and isinstance(out.get(k), dict)
        out[k] = _merge(out[k], v) if merge else v
    return out


def load_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe with its `base:` chain resolved: `base: quickstart.yaml` (relative to the recipe)
    loads that recipe first and applies this one's keys over it (see `_merge`)."""
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
        try:
            value = parse_yaml(text) if text.strip() else None
        except DuplicateKeys as e:
            problems += [f"{key}.{p}" for p in e.problems]
            continue
        except yaml.YAMLError as e:
            problems.append(f"{key}: invalid YAML value {text!r} ({str(e).splitlines()[0]})")
            continue
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
        # a key that exists as it is in another section was most likely put in the wrong one (model.lr
        # means learner.lr, not model.lora); otherwise the closest key of this section, then of any
        hint = [k for k in _all_keys() if k.endswith("." + name)][:1] or difflib.get_close_matches(
            name, list(owner.model_fields) if owner else [], n=1) or difflib.get_close_matches(
            name, _all_keys(), n=1, cutoff=0.8)
        return f"{key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return f"{key}: expected {msg}, got {err.get('input')!r}"


def plugin_kwargs_problems(key: str, obj: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    """Check a plug-in's YAML kwargs against its signature and annotations (see `checked_kwargs`)."""
    return checked_kwargs(key, obj, kwargs)[1]


def checked_kwargs(key: str, obj: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A plug-in's YAML kwargs checked against its signature and annotations, and completed.

    Returns (kwargs, problems). Classes are checked against __init__; functions against their
    keyword parameters (the leading positional parameters without defaults are the data the seam
    passes in). Parameters named in CONTEXT_ARGS are filled by rlvr and may not be set in YAML.
    The kwargs returned, in signature order, are the recipe's values converted to their annotated
    types (the override `advantage.epsilon=1e-4` reads as the string '1e-4': the plug-in gets
    the float) and every default the recipe left out that is plain YAML data, so the dumped config
    records what the plug-in gets; keys a `**kwargs` takes come last, as given. E.g. GRPO and {}
    give ({'epsilon': 1e-06, 'singleton': 'raw'}, []).
    """
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())
    if not inspect.isclass(obj):
        while params and params[0].default is inspect.Parameter.empty and params[0].kind in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            params.pop(0)
    by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    hints = type_hints(obj)
    given, problems = {}, []
    for name, value in kwargs.items():
        if name in CONTEXT_ARGS:
            problems.append(f"{key}.{name}: set by rlvr from the rest of the recipe, not here")
            continue
        if name not in by_name:
            if open_kwargs:
                given[name] = value
            else:
                hint = difflib.get_close_matches(name, list(by_name), n=1)
                accepted = ", ".join(by_name) or "none"
                problems.append(f"{key}.{name}: unknown key for {getattr(obj, '__name__', obj)}"
                                + (f" (did you mean {hint[0]!r}?)" if hint else f"; accepted: {accepted}"))
            continue
        if name not in hints:
            given[name] = value
            continue
        try:
            given[name] = TypeAdapter(hints[name]).validate_python(value)
        except ValidationError as e:
            for sub in e.errors():
                msg = sub["msg"].removeprefix("Input should be ")
                problems.append(f"{key}.{name}: expected {msg}, got {value!r}")
    out = {}
    for name, p in by_name.items():
        if name in given:
            out[name] = given.pop(name)
        elif name in CONTEXT_ARGS or name in kwargs:
            continue
        elif p.default is inspect.Parameter.empty:
            problems.append(f"{key}.{name}: required by {getattr(obj, '__name__', obj)} but missing")
        elif p.kind is not p.POSITIONAL_ONLY and _plain_data(p.default):
            try:
                out[name] = TypeAdapter(hints[name]).validate_python(p.default) if name in hints else p.default
            except ValidationError:
                pass  # a default outside its own annotation: Python passes it, the record leaves it out
    return {**out, **given}, problems


def _plain_data(value: Any) -> bool:
    """Whether `value` dumps to YAML and reads back as itself: None, bool, int, finite float, str,
    and lists, tuples and str-keyed dicts of those."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


PLUGIN_SECTIONS: list[tuple[tuple[str, ...], Registry]] = [
    (("sampling", "sampler"), SAMPLER),
    (("sampling", "allocator"), ALLOCATOR),
    (("advantage",), ADVANTAGE),
    (("loss", "policy"), POLICY_LOSS),
    (("loss", "aggregation"), AGGREGATION),
    (("env",), ENV),
]


def _plugin_sections(cfg: Config | None, raw: dict[str, Any]) -> list[tuple[str, Registry, Plugin | None]]:
    """(dotted key, registry, section) of every plug-in section; from the raw recipe when the whole
    schema failed, so a plug-in's problems are reported next to the schema's (None: unreadable)."""
    out = []
    for path, registry in PLUGIN_SECTIONS:
        key = ".".join(path)
        if cfg is not None:
            section: Any = cfg
            for part in path:
                section = getattr(section, part)
            out.append((key, registry, section))
            continue
        node: Any = raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        try:
            out.append((key, registry, Plugin.model_validate(node) if node is not None else None))
        except ValidationError:
            out.append((key, registry, None))  # the schema's problems already name it
    return out


def _resolve_plugins(sections: list[tuple[str, Registry, Plugin | None]], base_dir: str | Path | None
                     ) -> tuple[dict[str, Any], dict[str, Plugin], list[str]]:
    """Each plug-in section resolved and checked once. Returns {dotted key: the function or class}
    of every name that resolves, {dotted key: the section with its target set and its kwargs
    completed (see `checked_kwargs`)} of those whose kwargs check too, and the problems."""
    targets, resolved, problems = {}, {}, []
    for key, registry, section in sections:
        if section is None:
            continue
        try:
            obj = registry.get(section.name, base_dir)
        except RegistryError as e:
            problems.append(f"{key}.name: {e}")
            continue
        targets[key] = obj
        kwargs, found = checked_kwargs(key, obj, section.kwargs)
        problems += found
        if not found:
            done = Plugin(name=section.name, **kwargs)
            done._target = obj
            resolved[key] = done
    return targets, resolved, problems


def _complete_plugins(cfg: Config, resolved: dict[str, Plugin]) -> None:
    """Put the resolved sections into `cfg` in place of the recipe's."""
    for path, _ in PLUGIN_SECTIONS:
        key = ".".join(path)
        if key in resolved:
            parent: Any = cfg
            for part in path[:-1]:
                parent = getattr(parent, part)
            setattr(parent, path[-1], resolved[key])


def _declared_problems(cfg: Config, targets: dict[str, Any]) -> list[str]:
    """What each configured plug-in's own `problems(cfg)` says (plug-ins that must go together),
    and the learner strategy's verdict on plug-ins that declare `needs_whole_gradients`."""
    problems = [p for key, obj in targets.items() for p in declared_problems(obj, cfg, f"{key}.name")]
    for key, obj in targets.items():
        if getattr(obj, "needs_whole_gradients", False):
            name = _section_at(cfg, key).name
            problems += _whole_gradients_problems(cfg, f"{key}.name: {name}")
    return problems + _async_problems(cfg, targets)


def _async_problems(cfg: Config, targets: dict[str, Any]) -> list[str]:
    """What asynchronous training (rollout.max_staleness >= 1) and the workers' settings cannot do.

    A plug-in with a `refresh` hook (VAS re-scoring, GVM's estimation, SPO's offline start) runs
    generation or learner passes through the trainer before each step's prompts are drawn; with
    the next steps already being generated there is no such point, so it needs k = 0.
    """
    r = cfg.rollout
    problems = []
    if r.max_staleness and r.mode == "colocated":
        problems.append(f"rollout.max_staleness: {r.max_staleness} needs rollout.mode: disaggregated (a colocated "
                        "engine generates and trains in turn, so nothing can overlap)")
    if r.max_staleness:
        for key, obj in targets.items():
            if callable(getattr(obj, "refresh", None)):
                problems.append(f"{key}.name: {_section_at(cfg, key).name} has a refresh hook (work through the "
                                "trainer before each step's prompts are drawn), which needs synchronous steps: set "
                                "rollout.max_staleness: 0 or choose another plug-in")
    if r.workers.urls and r.engine != "vllm":
        problems.append("rollout.workers.urls: workers are vLLM servers (`rlvr serve`); set rollout.engine: vllm, "
                        "or leave the list empty for the in-process hf worker")
    problems += _worker_gpu_problems(r)
    if r.mode == "disaggregated" and r.engine == "vllm" and r.vllm.sleep_mode:
        problems.append("rollout.vllm.sleep_mode: disaggregated workers keep their memory (they are not on the "
                        "learner's devices); set it to false")
    return problems


def _worker_gpu_problems(r: Any) -> list[str]:
    """rollout.workers.gpus: one device list per started worker, each as wide as its tensor parallelism."""
    gpus, problems = r.workers.gpus, []
    if not gpus:
        return problems
    if r.mode != "disaggregated" or r.engine != "vllm":
        problems.append("rollout.workers.gpus: places the vLLM workers of rollout.mode: disaggregated with "
                        "rollout.engine: vllm; this recipe has none")
    elif r.workers.urls:
        problems.append("rollout.workers.gpus: places workers that rlvr starts; the workers at rollout.workers.urls "
                        "run where they were started (rlvr serve under CUDA_VISIBLE_DEVICES)")
    elif len(gpus) != r.workers.num:
        problems.append(f"rollout.workers.gpus: {len(gpus)} entries for rollout.workers.num: {r.workers.num} "
                        "workers (one CUDA_VISIBLE_DEVICES list per worker)")
    tp = r.vllm.tensor_parallel_size
    for i, entry in enumerate(gpus):
        devices = [d.strip() for d in entry.split(",")]
        if not all(d.isdigit() for d in devices):
            problems.append(f"rollout.workers.gpus[{i}]: {entry!r} is not a comma-separated list of device numbers")
        elif len(devices) != tp:
            problems.append(f"rollout.workers.gpus[{i}]: {entry!r} has {len(devices)} device(s); each worker needs "
                            f"rollout.vllm.tensor_parallel_size: {tp}")
    seen = [d.strip() for entry in gpus for d in entry.split(",")]
    if shared := sorted({d for d in seen if seen.count(d) > 1}):
        problems.append(f"rollout.workers.gpus: device(s) {', '.join(shared)} given to more than one worker")
    return problems


def _section_at(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _whole_gradients_problems(cfg: Config, who: str) -> list[str]:
    """Per-sample gradient norms need each process to hold whole gradients: not under fsdp2, zero2
    or zero3, whether named in learner.strategy or taken by `auto` from the launcher."""
    from rlvr.learner.distributed import planned_strategy
    from rlvr.learner.grad_norms import whole_gradients_problem

    strategy = planned_strategy(cfg.learner.strategy)
    problem = None if strategy is None else whole_gradients_problem(who, strategy)
    if problem is None:
        return []
    return [problem + (" (learner.strategy: auto took it from accelerate launch)"
                       if cfg.learner.strategy == "auto" else "")]


def plugin_choices(raw: dict[str, Any], base_dir: str | Path | None = None) -> dict[str, Any]:
    """A copy of a dumped config (plain data, e.g. a checkpoint's config.yaml) with each plug-in
    section cut down to what the recipe chose: its name and the kwargs that differ from the
    plug-in's defaults, converted to their annotated types.

    Two configs that differ only in which defaults they record (one written before rlvr recorded
    them) thus compare equal: {name: grpo} and {name: grpo, epsilon: 1.0e-6, singleton: raw} both
    become {name: grpo}. A section whose plug-in does not resolve, or whose kwargs do not check,
    is left as it is.
    """
    raw = copy.deepcopy(raw)
    for path, registry in PLUGIN_SECTIONS:
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        section = node.get(path[-1]) if isinstance(node, dict) else None
        if not isinstance(section, dict) or not isinstance(section.get("name"), str):
            continue
        try:
            obj = registry.get(section["name"], base_dir)
        except RegistryError:
            continue
        kwargs, problems = checked_kwargs("", obj, {k: v for k, v in section.items() if k != "name"})
        if problems:
            continue
        defaults = checked_kwargs("", obj, {})[0]
        node[path[-1]] = {"name": section["name"], **{
            k: v for k, v in kwargs.items() if k not in defaults or not _same_value(v, defaults[k])}}
    return raw


def _same_value(a: Any, b: Any) -> bool:
    # a tuple default and the list YAML gives back are the same setting
    return a == b or (isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b))


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
            load_callable(cfg.rollout.stratum, base_dir)
        except RegistryError as e:
            problems.append(f"rollout.stratum: {e}")
    if cfg.data.prompt_field is None and cfg.data.prompt_template is None:
        problems.append("data.prompt_field: set it or data.prompt_template")
    if cfg.learner.strategy in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"learner.strategy: {cfg.learner.strategy} needs deepspeed (pip install -e .[deepspeed])")
    if cfg.warmup.steps and cfg.learner.strategy in ("zero2", "zero3"):
        problems.append(f"warmup.steps: the warm-up needs an optimiser of its own, which learner.strategy "
                        f"{cfg.learner.strategy} (DeepSpeed owns the optimiser) does not allow; use ddp or fsdp2, or "
                        "train the demonstrations beforehand and point model.path at the result")
    problems += _lora_problems(cfg)
    n = cfg.sampling.prompts_per_step * cfg.sampling.samples_per_prompt
    if cfg.learner.mini_batches_per_step > n:
        problems.append(f"learner.mini_batches_per_step: {cfg.learner.mini_batches_per_step} is more than the "
                        f"{n} samples of a step")
    return problems


def _lora_problems(cfg: Config) -> list[str]:
    """model.lora needs peft, and a strategy whose processes each hold whole parameters (single or ddp)."""
    from rlvr.learner.distributed import planned_strategy
    from rlvr.learner.lora import peft_missing, strategy_problem

    if cfg.model.lora is None:
        return []
    problems = [peft_missing()] if importlib.util.find_spec("peft") is None else []
    strategy = planned_strategy(cfg.learner.strategy)
    if strategy is not None and (problem := strategy_problem(strategy)):
        problems.append(problem + (" (learner.strategy: auto took it from accelerate launch)"
                                   if cfg.learner.strategy == "auto" else ""))
    return problems


def _reward_problems(reward: RewardConfig | None, base_dir: str | Path | None) -> list[str]:
    from rlvr.reward import check_specs

    if reward is None:
        return []
    return check_specs(_specs(reward), base_dir=base_dir, accuracy=reward.accuracy)


def reward_specs(cfg: Config) -> list[Any]:
    """The recipe's reward functions as RewardSpecs (name, weight, kwargs), in recipe order."""
    return _specs(cfg.reward)


def _specs(reward: RewardConfig) -> list[Any]:
    from rlvr.reward import RewardSpec

    return [RewardSpec(**f.model_dump()) for f in reward.functions]


def _section(cfg: Config | None, raw: dict[str, Any], name: str, cls: type[BaseModel]) -> Any:
    """One top-level section, validated alone from the raw recipe when the whole did not validate
    (None when it is missing or has problems of its own, which the schema already reported)."""
    if cfg is not None:
        return getattr(cfg, name)
    if not isinstance(raw, dict):
        return None
    try:
        return cls.model_validate(raw.get(name, {}))
    except ValidationError:
        return None


def _input_problems(cfg: Config | None, raw: dict[str, Any], base_dir: str | Path | None, *,
                    check_inputs: bool) -> list[str]:
    """Data sources always (cheap: task names and arguments); with `check_inputs` also the model
    folder and reading every data file (see rlvr/config/preflight.py)."""
    from rlvr.config import preflight

    problems = []
    data = _section(cfg, raw, "data", DataConfig)
    if data is not None:
        problems += preflight.data_problems(data, base_dir, read=check_inputs)
    if check_inputs:
        if cfg is not None:
            problems += preflight.model_problems(cfg, base_dir)
        else:  # without run/loss sections that validate, resuming and KL cannot be told: skip
            model = _section(cfg, raw, "model", ModelConfig)
            run = _section(cfg, raw, "run", RunConfig)
            loss = _section(cfg, raw, "loss", LossConfig)
            if model is not None and run is not None and loss is not None:
                partial = Config.model_construct(model=model, run=run, loss=loss)
                problems += preflight.model_problems(partial, base_dir)
    return problems


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
            if default is not None:  # an optional section (env) has no default plug-in to name
                section["name"] = default.name
    return raw


def validate(raw: dict[str, Any], base_dir: str | Path | None = None, source: str = "recipe", *,
             check_inputs: bool = False, check_context: bool = False) -> Config:
    """The typed recipe, or ConfigError listing every problem found.

    Always: the schema, plug-in names and kwargs, rewards, synthetic data sources, cross-field
    rules and what plug-ins declare with `problems(cfg)`. `check_inputs`: the model folder exists
    and the data files read and have the fields (`rlvr train`, `rlvr config validate`).
    `check_context`: the prompts fit the model's context, when the tokenizer and model config are
    at hand without downloading (`rlvr config validate`; training checks after its tokenizer loads).
    """
    from rlvr.config import preflight

    raw = _default_plugin_names(raw)
    try:
        cfg: Config | None = Config.model_validate(raw)
        problems = []
    except ValidationError as e:
        cfg, problems = None, [_explain(err) for err in e.errors()]
    targets, resolved, found = _resolve_plugins(_plugin_sections(cfg, raw), base_dir)
    problems += found
    problems += _reward_problems(_section(cfg, raw, "reward", RewardConfig), base_dir)
    problems += _input_problems(cfg, raw, base_dir, check_inputs=check_inputs)
    if cfg is not None:
        _complete_plugins(cfg, resolved)
        problems += _cross_problems(cfg, base_dir) + _declared_problems(cfg, targets)
    if cfg is not None and not problems and check_context:
        problems += preflight.local_context_problems(cfg, base_dir)
    if problems:
        raise ConfigError(problems, source)
    assert cfg is not None
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, *, check_inputs: bool = False,
                check_context: bool = False) -> Config:
    """Read, merge, override and `validate` a recipe (see there for the two checks)."""
    raw = apply_overrides(load_recipe(path), overrides or [])
    return validate(raw, base_dir=Path(path).parent, source=str(path), check_inputs=check_inputs,
                    check_context=check_context)


def to_yaml(cfg: Config) -> str:
    """The validated config as YAML, plug-in defaults included (what config.yaml and `config show` hold)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
