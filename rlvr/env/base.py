"""The environment seam: what answers a model between its turns.

An episode starts from a dataset row (`start(row) -> state`); after every model turn the episode
runner (rlvr/env/episodes.py) calls `respond(state, turn_text) -> Reply`: the messages the
environment adds (tool results, observations, feedback), or `done` with the reason the episode
ends. The runner itself ends an episode when the turn budget (`env.max_turns`) or the token
budget (`rollout.max_new_tokens`, all turns together) runs out.

    class Echo:                                   # a complete environment
        def start(self, row):
            return {"turns": 0}
        def respond(self, state, turn):
            state["turns"] += 1
            if state["turns"] == 2:
                return Reply.end("enough")
            return Reply([{"role": "user", "content": "say it again"}])

An environment that scores its own episodes (verifiers' rubrics, rlvr/env/verifiers_env.py) also
defines `finish(states, ends) -> list[dict]`: called once per batch after every episode ended, one
record per episode (e.g. {"reward": 0.75, "metrics": {...}}) that joins the episode's record and
reaches the rewards as `row["episode"]` (the `env` reward reads its "reward").

An environment with tools may define `tool_schemas() -> list[dict]` (JSON schemas in OpenAI's
function format); the prompts then pass them to the chat template as `tools=`.

`ToolEnvironment` is the common case: named Python functions the model calls with the
`<tool_call>` syntax (rlvr/env/tool_calls.py); a reply without a call is the final answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rlvr.env.tool_calls import BadToolCall, ToolCall, function_schema, parse_tool_calls
from rlvr.processes import child_context


@dataclass
class Reply:
    """What the environment answers to one model turn."""

    messages: list[dict[str, str]]  # chat messages ({"role", "content"}) inserted before the next turn
    done: bool = False  # the episode ends after this turn (messages are then ignored)
    reason: str = ""  # why it ended: "answer", "tool_timeout", or the environment's own word
    tool_calls: dict[str, int] = field(default_factory=dict)  # calls made in this turn, by tool name
    tool_errors: int = 0  # calls that could not be run (malformed, unknown tool, the tool raised)
    tool_s: float = 0.0  # seconds spent in tools

    @staticmethod
    def end(reason: str, **kwargs: Any) -> Reply:
        """The episode ends after this turn, for `reason`."""
        return Reply([], True, reason, **kwargs)


@runtime_checkable
class Environment(Protocol):
    """The seam (`env:` in a recipe): built-ins in rlvr/env/, or `file.py:Class`."""

    def start(self, row: dict[str, Any]) -> Any:
        """A new episode's state, from its dataset row (called once per sample of a group)."""
        ...

    def respond(self, state: Any, turn: str) -> Reply:
        """The environment's answer to the model's latest turn (its text, special tokens removed)."""
        ...


class ToolTimeout(Exception):
    pass


def call_with_timeout(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """fn(**kwargs) on a daemon thread; raises ToolTimeout after `timeout_s` (the thread is left
    to finish on its own: Python cannot stop it, so a tool that can hang for good belongs in a
    subprocess, as the python environment's sandbox does)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(**kwargs)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name="rlvr-tool", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise ToolTimeout(f"the tool ran longer than {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class ToolFailed(Exception):
    """A tool run in its own process raised (the message names the error) or its process died."""


def call_in_process(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float,
                    start_timeout_s: float = 120.0) -> Any:
    """fn(**kwargs) in a fresh process (rlvr/processes.py: a fork of the fork server); raises ToolTimeout
    when the call runs past `timeout_s`, and kills the process, so nothing of the call outlives it.
    The clock starts once the process is up: the fork server's first start (it imports the
    trainer's modules, seconds on a busy machine) is not the tool's time; a process that is not
    up within `start_timeout_s` is a ToolFailed. `fn` and the result are pickled: a module-level
    function (or a bound method of a picklable object); its error comes back as
    ToolFailed("<Type>: <message>"), and so does a process that dies (os._exit, a crash in C).
    Costs a process start per call (tens of ms once the fork server runs).
    """
    ctx = child_context(__name__)
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_tool_process, args=(fn, kwargs, sender), name="rlvr-tool", daemon=True)
    proc.start()
    sender.close()
    try:
        if not receiver.poll(start_timeout_s):
            raise ToolFailed(f"the tool's process did not start within {start_timeout_s:g} s")
        try:
            receiver.recv()  # "started": the tool's own time begins
            if not receiver.poll(timeout_s):
                raise ToolTimeout(f"the tool ran longer than {timeout_s:g} s (its process was killed)")
            ok, value = receiver.recv()
        except EOFError:  # it died before it answered
            proc.join(5.0)
            raise ToolFailed(f"the tool's process died (exit code {proc.exitcode})") from None
        if not ok:
            raise ToolFailed(value)
        return value
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5.0)
        receiver.close()


def _tool_process(fn: Callable[..., Any], kwargs: dict[str, Any], conn: Any) -> None:
    conn.send(None)  # up and unpickled: the caller's timeout starts now
    try:
        conn.send((True, fn(**kwargs)))
    except BaseException as e:  # told to the parent in words: the exception may not pickle
        conn.send((False, f"{type(e).__name__}: {e}"))


class ToolEnvironment:
    """Tools the model calls by name; a turn without a call is the answer and ends the episode.

    Each call's result (or its error) is one message of role `tool_role` ("tool": the chat
    template wraps it as its model expects, e.g. Qwen's <tool_response>). A malformed call, an
    unknown tool, wrong arguments or a tool that raises are answered with "error: ..." and counted
    in `tool_errors`; a tool that runs past `tool_timeout_s` ends the episode ("tool_timeout").
    Subclasses fill `tools` (name -> function of keyword arguments returning text).

    `tool_process`: each call runs in a process of its own (`call_in_process`), which a timeout
    kills and a crash cannot take the trainer down with; otherwise on a thread, which is cheap
    but, timed out, is left running (Python cannot stop a thread).
    """

    tools: dict[str, Callable[..., Any]] = {}
    tool_role = "tool"

    def __init__(self, tool_timeout_s: float = 10.0, max_calls_per_turn: int = 4, tool_process: bool = False):
        self.tool_timeout_s = tool_timeout_s
        self.max_calls_per_turn = max_calls_per_turn
        self.tool_process = tool_process

    def start(self, row: dict[str, Any]) -> Any:
        """No state of its own (a subclass may keep some)."""
        return None

    def respond(self, state: Any, turn: str) -> Reply:
        """Run the turn's tool calls, or end the episode when it has none."""
        calls = parse_tool_calls(turn)
        if not calls:
            return Reply.end("answer")
        messages, counts, errors, t0 = [], {}, 0, time.perf_counter()
        for i, call in enumerate(calls):
            if i >= self.max_calls_per_turn:
                text, errors = f"error: at most {self.max_calls_per_turn} tool calls per turn", errors + 1
            elif isinstance(call, BadToolCall):
                text, errors = f"error: {call.error}", errors + 1
            else:
                if call.name in self.tools:  # by tool; an unknown name is an error, not a metric of its own
                    counts[call.name] = counts.get(call.name, 0) + 1
                try:
                    text = self.run_tool(call)
                except ToolTimeout:  # the episode ends cleanly (a thread is left behind, a process killed)
                    return Reply([], True, "tool_timeout", counts, errors + 1, time.perf_counter() - t0)
                except ToolFailed as e:  # in its own process: the error as the process told it
                    text, errors = f"error: {e}", errors + 1
                except Exception as e:  # the model sees what went wrong and may try again
                    text, errors = f"error: {type(e).__name__}: {e}", errors + 1
            messages.append({"role": self.tool_role, "content": text})
        return Reply(messages, False, "", counts, errors, time.perf_counter() - t0)

    def tool_schemas(self) -> list[dict[str, Any]]:
        """Each tool's JSON schema (rlvr/env/tool_calls.py `function_schema`), which the prompts
        hand to the chat template as `tools=` (`data.tool_schemas`), so a model reads its tools in
        the form it was trained on (Qwen's <tools> block in the system turn, for one)."""
        return [function_schema(name, fn) for name, fn in self.tools.items()]

    def run_tool(self, call: ToolCall) -> str:
        """The result text of one well-formed call (raises for an unknown tool or bad arguments)."""
        fn = self.tools.get(call.name)
        if fn is None:
            raise LookupError(f"unknown tool {call.name!r}; the tools are {', '.join(sorted(self.tools))}")
        run = call_in_process if self.tool_process else call_with_timeout
        return str(run(fn, call.arguments, self.tool_timeout_s))
