"""One small registry shared by the six plug-in seams.

A seam maps names to callables (functions or classes). A name is either a registered built-in
("grpo") or user code: "package.module:attr" or "path/to/file.py:attr" (relative paths resolve
against the current directory, then against the recipe's directory when one is given).

    >>> ADVANTAGE = Registry("advantage")
    >>> @ADVANTAGE.register("grpo")
    ... def grpo(...): ...
    >>> ADVANTAGE.get("grpo")                     # the built-in
    >>> ADVANTAGE.get("my_adv.py:estimator")      # a user's function, no edit inside rlvr

A built-in registers by living in its seam's package: the first look-up of a name (`get`,
`names`) imports every module of the package(s) the registry was given, so a new estimator is a
new file in rlvr/advantage/ and nothing else. Importing rlvr alone imports none of them.

Plug-ins that only make sense with other settings say so by declaring `problems(cfg) -> list[str]`:
a staticmethod or classmethod on a class plug-in, or an attribute of a function plug-in
(`fn.problems = ...`). `rlvr config validate` (and `rlvr train`, before any model loads) calls it
with the whole validated `Config` for every configured plug-in; each returned string is one
problem that names the keys to change, e.g.

    advantage.name: delta_l needs loss.aggregation.name: delta_l (got token_mean)

It must be cheap and side-effect free (no model, no data); an exception it raises is reported as
a problem of that plug-in, not a crash.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlvr.errors import RlvrError

SEAMS = ("sampler", "allocator", "reward", "advantage", "aggregation", "policy_loss")

# Arguments rlvr passes to plug-in constructors itself (never set in YAML, never recorded as kwargs).
CONTEXT_ARGS = ("num_prompts", "seed", "samples_per_prompt", "prompts_per_step", "max_new_tokens", "prompt_uids",
                "advantage", "base_dir")


class RegistryError(RlvrError, LookupError):
    """A plug-in name that does not resolve to something callable; the message names the reference."""

    exit_code = 2


def load_object(ref: str, base_dir: str | Path | None = None) -> Any:
    """Import "module:attr" or "path/to/file.py:attr"; errors name the reference."""
    if ":" not in ref:
        raise RegistryError(f"{ref!r} is neither a built-in name nor 'module:attr' / 'file.py:attr'")
    target, attr = ref.rsplit(":", 1)
    if target.endswith(".py"):
        candidates = [Path(target)]
        if base_dir is not None and not Path(target).is_absolute():
            candidates.append(Path(base_dir) / target)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise RegistryError(f"{ref!r}: file {target!r} not found")
        path = path.resolve()
        mod_name = "rlvr_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except KeyboardInterrupt:
                del sys.modules[mod_name]
                raise
            except BaseException as e:  # sys.exit at import must not end rlvr silently
                del sys.modules[mod_name]
                raise RegistryError(f"{ref!r}: importing {path} {_import_failure(e)}") from e
    else:
        try:
            module = importlib.import_module(target)
        except KeyboardInterrupt:
            raise
        except ImportError as e:
            raise RegistryError(f"{ref!r}: cannot import module {target!r}: {e}") from e
        except BaseException as e:
            raise RegistryError(f"{ref!r}: importing module {target!r} {_import_failure(e)}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{ref!r}: {target!r} has no attribute {attr!r}") from None


def _import_failure(e: BaseException) -> str:
    """How an import ended, for a message: a raised error, or a call of sys.exit."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r}); a plug-in file must not exit when imported"
    return f"failed: {type(e).__name__}: {e}"


def load_callable(ref: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
    """`load_object`, and the object must be a function or class (a plug-in is called)."""
    obj = load_object(ref, base_dir)
    if not callable(obj):
        raise RegistryError(f"{ref!r} is {_describe(obj)}, not a function or class")
    return obj


def _describe(obj: Any) -> str:
    text, kind = repr(obj), type(obj).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{article} {kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def declared_problems(obj: Any, cfg: Any, key: str = "plug-in") -> list[str]:
    """What a plug-in's optional `problems(cfg)` says about the recipe (see the module docstring);
    `key` (e.g. "advantage.name") prefixes the problem reported when the check itself raises.

    On a class only a staticmethod or classmethod counts: an instance method of that name is the
    plug-in's own business and is never called without an instance.
    """
    import inspect

    if inspect.isclass(obj):
        raw = inspect.getattr_static(obj, "problems", None)
        if not isinstance(raw, (staticmethod, classmethod)):
            return []
    fn = getattr(obj, "problems", None)
    if not callable(fn):
        return []
    try:
        found = fn(cfg)
    except Exception as e:  # a plug-in's own check must not crash validation
        return [f"{key}: {getattr(obj, '__name__', obj)}.problems(cfg) raised {type(e).__name__}: {e}"]
    return [str(p) for p in found or []]


class Registry:
    """The names of one seam. `packages` hold its built-ins (a package, whose every module is
    imported, or a single module); they are imported on the first look-up, not before."""

    def __init__(self, seam: str, packages: tuple[str, ...] = ()):
        self.seam = seam
        self.packages = packages
        self._items: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that files a function or class under `name` (a second use of a name is an error)."""

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise RegistryError(f"{self.seam} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a built-in module that looks a name up while importing must not recurse
        try:
            for package in self.packages:
                import_package(package)
        except BaseException:
            self._loaded = False
            raise

    def names(self) -> list[str]:
        """The built-in names, sorted."""
        self._load_builtins()
        return sorted(self._items)

    def get(self, name: str, base_dir: str | Path | None = None) -> Callable[..., Any]:
        """The built-in `name`, or user code 'module:attr' / 'file.py:attr' (see `load_object`); an
        unknown name raises RegistryError listing the built-ins and the closest one."""
        self._load_builtins()
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return load_callable(name, base_dir)
        hint = difflib.get_close_matches(name, self.names(), n=1)
        msg = f"unknown {self.seam} {name!r}; built-ins are {', '.join(self.names())}"
        if hint:
            msg += f" (did you mean {hint[0]!r}?)"
        raise RegistryError(msg + "; user code is named 'module:attr' or 'file.py:attr'")


def import_package(name: str) -> None:
    """Import module `name` and, when it is a package, every module below it (subpackages too)."""
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=name + "."):
        importlib.import_module(info.name)


SAMPLER = Registry("sampler", ("rlvr.sampling",))
ALLOCATOR = Registry("allocator", ("rlvr.sampling",))
REWARD = Registry("reward", ("rlvr.reward.builtins", "rlvr.reward.reasoning_gym"))
ADVANTAGE = Registry("advantage", ("rlvr.advantage",))
AGGREGATION = Registry("aggregation", ("rlvr.learner.aggregation",))
POLICY_LOSS = Registry("policy_loss", ("rlvr.learner.policy_loss",))
ENV = Registry("env", ("rlvr.env",))


def build_plugin(obj: Callable[..., Any], kwargs: dict[str, Any], context: dict[str, Any]) -> Any:
    """Instantiate a class plug-in, or bind a function plug-in's keyword arguments.

    `obj` and `kwargs` come from a validated recipe section (`Plugin.target`, `Plugin.kwargs`):
    resolved, checked and converted to the annotated types there, so nothing is looked up twice.
    `context` holds values rlvr provides (e.g. num_prompts, seed); only those the plug-in's
    signature names are passed, so a plug-in declares what it needs by naming it.
    """
    import functools
    import inspect

    params = inspect.signature(obj).parameters
    wanted = {k: v for k, v in context.items() if k in params}
    if inspect.isclass(obj):
        return obj(**wanted, **kwargs)
    return functools.partial(obj, **wanted, **kwargs)


def type_hints(obj: Any) -> dict[str, Any]:
    """Annotations of a plug-in's keyword arguments (a class's __init__), {} if unreadable."""
    import inspect
    import typing

    try:
        return typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj, include_extras=True)
    except Exception:
        return {}
