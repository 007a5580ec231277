"""Tool calls in a model's reply, in the chat-template syntax Qwen, Hermes and most 2025-26 open
models are trained on:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "12*7"}}
    </tool_call>

A reply may hold several calls. Every `<tool_call>` block becomes a `ToolCall` or, when it cannot
be read, a `BadToolCall` whose `error` says why in words the model is shown (so a malformed call
is answered, never a crash): the JSON does not parse, "name" is missing or not a string,
"arguments" is neither an object nor a JSON string of one, or the block is never closed.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass
class ToolCall:
    """One well-formed call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class BadToolCall:
    """A `<tool_call>` block that cannot be run; `error` is what the model is told."""

    text: str
    error: str


def parse_tool_calls(text: str) -> list[ToolCall | BadToolCall]:
    """Every `<tool_call>` block of a reply, in order.

    Example: 'x<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>' -> [ToolCall("add", {"a": 1})];
    '<tool_call>{"name": add}</tool_call>' -> [BadToolCall(..., "the call is not valid JSON: ...")];
    'no call here' -> [].
    """
    calls: list[ToolCall | BadToolCall] = []
    end = 0
    for m in _BLOCK.finditer(text):
        calls.append(_read(m.group(1)))
        end = m.end()
    rest = text[end:]
    if OPEN in rest:  # an opened block the reply never closed (it ran out of tokens, or forgot)
        calls.append(BadToolCall(rest[rest.index(OPEN):], f"the call has no closing {CLOSE}"))
    return calls


def _read(body: str) -> ToolCall | BadToolCall:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return BadToolCall(body, f"the call is not valid JSON: {e.msg} (line {e.lineno} column {e.colno})")
    if not isinstance(obj, dict):
        return BadToolCall(body, 'the call must be a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return BadToolCall(body, 'the call has no "name" (a string)')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some templates put the arguments in as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return BadToolCall(body, f'"arguments" is a string that is not valid JSON: {e.msg}')
    if not isinstance(args, dict):
        return BadToolCall(body, '"arguments" must be a JSON object')
    return ToolCall(name, args)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The text of one call, as a model should write it (for prompts, tests and docs).

    Example: format_tool_call("add", {"a": 1}) -> '<tool_call>\\n{"name": "add", "arguments": {"a": 1}}\\n</tool_call>'.
    """
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{CLOSE}"


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def function_schema(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of one tool, in the form chat templates take as `tools=` (OpenAI's function
    format): the name, the docstring's first line as description, each keyword parameter with its
    JSON type (from the annotation; none when unannotated or not a plain type) and, when the
    docstring has a Google-style "Args:" section, its description. Parameters without a default
    are required; `self` and *args/**kwargs are left out.

    Example: def search(query: str, k: int | None = None): "The best documents for `query`."
    -> {"type": "function", "function": {"name": "search", "description": "The best documents for
    `query`.", "parameters": {"type": "object", "properties": {"query": {"type": "string"},
    "k": {"type": "integer"}}, "required": ["query"]}}}
    """
    doc = inspect.getdoc(fn) or ""
    described = dict(_ARG_LINE.findall(doc.split("Args:", 1)[1])) if "Args:" in doc else {}
    try:
        hints = get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: no types rather than no tool
        hints = {}
    properties: dict[str, Any] = {}
    required = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        spec: dict[str, Any] = {}
        hint = hints.get(p.name)
        if get_origin(hint) in (Union, UnionType):  # Optional[X] / X | None is X; other unions stay untyped
            members = [t for t in get_args(hint) if t is not type(None)]
            hint = members[0] if len(members) == 1 else None
        if (base := get_origin(hint) or hint) in _JSON_TYPES:
            spec["type"] = _JSON_TYPES[base]
        if p.name in described:
            spec["description"] = described[p.name].strip()
        properties[p.name] = spec
        if p.default is p.empty:
            required.append(p.name)
    return {"type": "function", "function": {
        "name": name, "description": doc.split("\n", 1)[0],
        "parameters": {"type": "object", "properties": properties, "required": required}}}


_ARG_LINE = re.compile(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", re.MULTILINE)
