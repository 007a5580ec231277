"""Tool calls read from a reply, and what a tool environment answers to each kind of call."""

import functools
import multiprocessing
import os
import threading
import time

import pytest

from rlvr.env import BadToolCall, ToolCall, ToolEnvironment, format_tool_call, parse_tool_calls
from rlvr.env.base import ToolFailed, call_in_process
from rlvr.env.calculator import Calculator, evaluate
from rlvr.env.tool_calls import function_schema


def test_well_formed_calls_in_order_with_text_around_them():
    text = ("I will compute. " + format_tool_call("calculator", {"expression": "12*7"}) + " and "
            + '<tool_call>{"name": "lookup", "arguments": "{\\"q\\": \\"x\\"}"}</tool_call>')
    assert parse_tool_calls(text) == [ToolCall("calculator", {"expression": "12*7"}), ToolCall("lookup", {"q": "x"})]
    assert parse_tool_calls("the answer is 84") == []


def test_malformed_calls_say_why():
    cases = {
        '<tool_call>{"name": calculator}</tool_call>': "the call is not valid JSON: Expecting value (line 1 column 10)",
        '<tool_call>["calculator"]</tool_call>': 'the call must be a JSON object {"name": ..., "arguments": {...}}',
        '<tool_call>{"arguments": {}}</tool_call>': 'the call has no "name" (a string)',
        '<tool_call>{"name": "c", "arguments": [1]}</tool_call>': '"arguments" must be a JSON object',
        '<tool_call>{"name": "c", "arguments": "{x"}</tool_call>': '"arguments" is a string that is not valid JSON',
        'ok <tool_call>{"name": "c", "argum': "the call has no closing </tool_call>",
    }
    for text, error in cases.items():
        (call,) = parse_tool_calls(text)
        assert isinstance(call, BadToolCall) and call.error.startswith(error), (text, call)


def test_the_calculator_evaluates_arithmetic_and_nothing_else():
    assert [evaluate(e) for e in ("(47 + 38) * 2", "7 / 2", "-3 + 1", "2 ** 10", "17 // 5", "17 % 5")] == [
        "170", "3.5", "-2", "1024", "3", "2"]
    # zero-padded operands, as synthetic:sum and :product write them (Python's syntax refuses "07");
    # decimals and inner zeros keep their value
    assert [evaluate(e) for e in ("07+85", "08*69", "100-007", "10.05*2", "0.5+0", "00")] == [
        "92", "552", "93", "20.1", "0.5", "0"]
    for bad, why in [("__import__('os').system('true')", "only numbers"), ("2 ** 1000", "exponent 1000 is over 64"),
                     ("1 / 0", "division by zero"), ("12 +", "cannot read"), ("", "non-empty"),
                     ("9 ** 64 * 9 ** 64", "more than 60 digits")]:
        try:
            evaluate(bad)
        except ValueError as e:
            assert why in str(e), (bad, e)
        else:
            raise AssertionError(f"{bad!r} was evaluated")


def test_a_tool_environment_answers_every_call_and_counts_errors():
    env = Calculator()
    reply = env.respond(env.start({}), "let me see " + format_tool_call("calculator", {"expression": "12*7"})
                        + format_tool_call("calc", {}) + '<tool_call>{bad}</tool_call>'
                        + format_tool_call("calculator", {"expression": "1/0"}))
    assert not reply.done and reply.tool_calls == {"calculator": 2} and reply.tool_errors == 3
    assert [m["content"] for m in reply.messages] == [
        "84", "error: LookupError: unknown tool 'calc'; the tools are calculator",
        "error: the call is not valid JSON: Expecting property name enclosed in double quotes (line 1 column 2)",
        "error: ValueError: division by zero"]
    assert all(m["role"] == "tool" for m in reply.messages)
    done = env.respond(None, "84")
    assert done.done and done.reason == "answer" and done.messages == []
    many = env.respond(None, format_tool_call("calculator", {"expression": "1"}) * 6)
    assert many.tool_calls == {"calculator": 4} and many.tool_errors == 2  # at most 4 per turn


class Hangs(ToolEnvironment):
    def __init__(self):
        super().__init__(tool_timeout_s=0.2)
        self.release = threading.Event()
        self.tools = {"wait": lambda: self.release.wait(30) and "late", "boom": self.boom}

    @staticmethod
    def boom():
        raise RuntimeError("the index is gone")


def test_a_hanging_tool_ends_the_episode_and_a_crashing_one_is_an_error_the_model_sees():
    env = Hangs()
    reply = env.respond(None, format_tool_call("boom", {}) + format_tool_call("wait", {}))
    assert reply.done and reply.reason == "tool_timeout" and reply.tool_errors == 2
    assert reply.tool_calls == {"boom": 1, "wait": 1}
    env.release.set()
    crash = env.respond(None, format_tool_call("boom", {}))
    assert not crash.done and crash.messages == [{"role": "tool", "content": "error: RuntimeError: the index is gone"}]


def test_the_worked_environment_in_the_docs_runs():
    """docs/agents.md's example, as printed there."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "agents.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert len(code.splitlines()) < 60
    ns: dict = {}
    exec(compile(code, "my_env.py", "exec"), ns)
    env = ns["Guess"](low=1, high=4)
    state = env.start({"prompt": "p"})
    secret = state["secret"]
    assert env.respond(state, "hmm").messages == [{"role": "user", "content": "answer with a number"}]
    if secret > 1:
        assert env.respond(state, "I say 1").messages == [{"role": "user", "content": "higher"}]
    done = env.respond(state, f"it is {secret}")
    assert done.done and done.reason == "found"


def test_a_tool_schema_has_json_types_required_parameters_and_documented_arguments():
    def lookup(query: str, k: int | None = None, tags: list[str] | None = None, scale: float = 1.0,
               exact: bool = False, anything=None, either: int | str = 0, *rest, **more) -> str:
        """Find documents.

        Longer text that the model is not shown.

        Args:
            query: the words to look for
            k (int): at most this many
        """
        return ""

    assert function_schema("lookup", lookup) == {"type": "function", "function": {
        "name": "lookup", "description": "Find documents.",
        "parameters": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "the words to look for"},
            "k": {"type": "integer", "description": "at most this many"},
            "tags": {"type": "array"}, "scale": {"type": "number"}, "exact": {"type": "boolean"},
            "anything": {}, "either": {}}}}}


def test_tool_environments_describe_each_tool_they_run():
    (calc,) = Calculator().tool_schemas()
    assert calc["function"]["name"] == "calculator"
    assert calc["function"]["parameters"] == {"type": "object", "properties": {"expression": {"type": "string"}},
                                              "required": ["expression"]}
    assert calc["function"]["description"] == evaluate.__doc__.splitlines()[0]


class InProcess(ToolEnvironment):
    """Tools that hang, kill their process, raise, or work, each call in a process of its own."""

    def __init__(self):
        super().__init__(tool_timeout_s=1.0, tool_process=True)
        self.tools = {"hang": functools.partial(time.sleep, 600), "die": functools.partial(os._exit, 3),
                      "calculator": evaluate}


def test_a_tool_in_its_own_process_is_killed_at_its_timeout_and_its_crash_is_an_error():
    env = InProcess()
    ok = env.respond(None, format_tool_call("calculator", {"expression": "12*7"}))
    assert (ok.reason, ok.messages, ok.tool_errors) == ("", [{"role": "tool", "content": "84"}], 0)
    bad = env.respond(None, format_tool_call("calculator", {"expression": "12*"}))
    assert bad.messages == [{"role": "tool", "content": "error: ValueError: cannot read '12*' as arithmetic"}]
    died = env.respond(None, format_tool_call("die", {}))
    assert not died.done and died.tool_errors == 1
    assert died.messages == [{"role": "tool", "content": "error: the tool's process died (exit code 3)"}]
    hung = env.respond(None, format_tool_call("hang", {}))  # sleeps 600 s unless killed at the 1 s timeout
    assert hung.done and hung.reason == "tool_timeout" and hung.tool_errors == 1
    # nothing of any call is left running (on a thread, the hanging call would be, for good)
    assert not [p for p in multiprocessing.active_children() if p.name == "rlvr-tool"]


class SlowToUnpickle:
    """An argument that takes 1.5 s to arrive in the tool's process (as a cold fork server's start
    does on a busy machine: importing the trainer's modules there once took over a second in CI)."""

    def __reduce__(self):
        return eval, ("__import__('time').sleep(1.5) or 'up'",)


def test_a_tool_process_timeout_counts_from_its_start_not_from_the_fork_servers_start_up():
    assert call_in_process(str, {"object": SlowToUnpickle()}, timeout_s=1.0) == "up"
    with pytest.raises(ToolFailed, match="did not start within 0.5 s"):
        call_in_process(str, {"object": SlowToUnpickle()}, timeout_s=1.0, start_timeout_s=0.5)
    assert not [p for p in multiprocessing.active_children() if p.name == "rlvr-tool"]
