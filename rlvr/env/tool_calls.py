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

import json
import re
from dataclasses import dataclass, field
from typing import Any

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
