"""`env: {name: verifiers, environment: ...}`: an environment written for the `verifiers` package.

verifiers (PyPI, Prime Intellect) environments of the classic API, the one the Environments Hub's
environments are written in: `vf.MultiTurnEnv` subclasses with `env_response(messages, state)`
and `@vf.stop` conditions, `vf.ToolEnv` with Python functions as tools, `vf.SingleTurnEnv`,
scored by a `vf.Rubric`. That API is verifiers 0.1.10 to 0.3.x (tested: 0.1.10, 0.1.12, 0.1.14,
0.2.1, 0.3.1; in 0.3 it lives in `verifiers.legacy` and answers at the old names; before 0.1.12
the rollout's client is an AsyncOpenAI, from 0.1.12 a `vf.Client`: both are bridged). 0.4.0
dropped it for the `verifiers.v1` stack (tasksets, harness programs that call an intercepted
OpenAI endpoint), which this adapter does not drive.

    env:
      name: verifiers
      environment: my_env.py:load_environment      # or module:attr, or an installed environment id
      args: {max_turns: 3}                         # keyword arguments of that function
    reward:
      rewards: [{name: env}]                       # the rubric's reward of each episode

How it plays an episode: verifiers' own `rollout` runs unchanged (setup_state, stop conditions,
env_response, cleanup) on an event loop that the adapter owns, in a thread of its own, with a
client that is not a model: each time the rollout asks for a model response, the ask waits until
rlvr's episode runner has generated the turn and hands it to `respond`. So rlvr generates every
turn itself, batched across episodes, token-exact (rlvr/env/episodes.py), and verifiers sees the
turns as chat messages. When the rollout asks again, the messages it added since the model's
turn (tool results, feedback) are the Reply; when it returns instead, the episode ends for its
stop condition (`no_tools_called`, `max_turns_reached`, `has_final_env_response`, ...).
After the batch, `finish` scores the episodes with the environment's rubric, the episodes of one
dataset row together (`score_group`, so group reward functions work), and returns
{"reward", "metrics"} per episode, which the `env` reward reads.

Tool calls: the model writes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(rlvr/env/tool_calls.py); the adapter turns each block into an OpenAI-style tool call on the
assistant message (ids `call_0`, `call_1`, ... per turn) and the text outside the blocks into its
content. A block that cannot be read is passed on with its raw text as arguments, so the
ToolEnv answers it with its own error message; it counts in `env/tool_errors_mean`.

An episode that rlvr ends first (rollout.max_turns, the token budget) is ended inside verifiers
as an overlong prompt (`prompt_too_long`, truncated), then scored like the others; a turn cut by
the token budget is not shown to verifiers.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from rlvr.env.base import Reply
from rlvr.env.tool_calls import OPEN, BadToolCall, parse_tool_calls
from rlvr.errors import RlvrError
from rlvr.registry import ENV, load_object

SUPPORTED = "verifiers>=0.1.10,<0.4 (the classic MultiTurnEnv / ToolEnv / Rubric API)"
OLDEST, TOO_NEW = (0, 1, 10), (0, 4)


class VerifiersError(RlvrError, RuntimeError):
    """verifiers is missing or too new, the environment cannot be loaded, or its rollout broke."""

    exit_code = 2


def import_verifiers() -> Any:
    """The `verifiers` module with the classic API, or a VerifiersError that says what to install."""
    try:
        import verifiers as vf
    except ImportError as e:
        raise VerifiersError(f"env verifiers needs the verifiers package: pip install 'rlvr[verifiers]' "
                             f"({SUPPORTED}); importing it failed: {e}") from e
    version = str(getattr(vf, "__version__", "0"))
    release = tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])
    if not OLDEST <= release < TOO_NEW:
        raise VerifiersError(f"env verifiers supports {SUPPORTED}; the installed verifiers is {version}"
                             + (" (0.4 replaced that API by verifiers.v1)" if release >= TOO_NEW else ""))
    try:
        vf.MultiTurnEnv  # noqa: B018 -- the classic API loads on first touch
    except AttributeError as e:
        raise VerifiersError(f"env verifiers supports {SUPPORTED}; verifiers {version} has no MultiTurnEnv ({e})") from e
    return vf


class _Loop:
    """One asyncio event loop on a daemon thread: verifiers' coroutines run there, whichever thread
    rlvr calls from (the loop thread, a producer thread, a notebook with its own running loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlvr-verifiers", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float | None = None) -> Any:
        """coro's result, waited for from the calling thread (TimeoutError after `timeout_s`)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


@dataclass
class Episode:
    """One episode's rendezvous with its verifiers rollout (lives on the adapter's loop)."""

    asks: asyncio.Queue  # (prompt messages, future of the model's text) each time the rollout asks
    task: asyncio.Task | None = None  # verifiers' rollout (the rubric scores it in `finish`)
    pending: asyncio.Future | None = None  # the ask waiting for the model's next turn
    seen: int = 0  # messages of the conversation rlvr already has (the prompt, then every turn)
    end: str = ""  # the verifiers stop condition, once the rollout returned
    state: Any = None  # verifiers' State, once the rollout returned
    group: int = 0  # episodes of one dataset row (a group of rlvr's) share it: the rubric scores them together

    async def turn(self, prompt: Any) -> str:
        """The rollout's ask: waits for rlvr's turn (`respond` sets it; an exception when rlvr ended
        the episode) and returns its text."""
        future = asyncio.get_running_loop().create_future()
        await self.asks.put((list(prompt), future))
        return await future


class OpenAIShaped:
    """The client of verifiers before 0.1.12, which calls `client.chat.completions.create(...)` of
    openai's AsyncOpenAI: answers with rlvr's turn as a ChatCompletion."""

    def __init__(self, episode: Episode):
        self.chat = self.completions = self
        self.episode = episode

    async def create(self, *, model: str, messages: Any, **kwargs: Any) -> Any:
        """`chat.completions.create`: rlvr's next turn as a ChatCompletion (tools, sampling ignored)."""
        from openai.types.chat import ChatCompletion

        try:
            text = await self.episode.turn(messages)
        except Exception as e:  # rlvr ended the episode: say it the way verifiers reads an overlong prompt
            import httpx
            from openai import BadRequestError

            why = "maximum context length is reached: the trainer ended the episode"
            response = httpx.Response(400, text=why, request=httpx.Request("POST", "http://rlvr/chat/completions"))
            raise BadRequestError(why, response=response, body=None) from e
        content, calls, _ = assistant_turn(text)
        tool_calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                      for c in calls]
        return ChatCompletion.model_validate({
            "id": f"rlvr-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{
                "index": 0, "finish_reason": "tool_calls" if calls else "stop",
                "message": {"role": "assistant", "content": content, "tool_calls": tool_calls or None}}]})


def text_of(content: Any) -> str:
    """A message's content as text (the text parts of a multi-part content, joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if text:
            parts.append(text)
    return "".join(parts)


def as_chat(message: Any) -> dict[str, str]:
    """A verifiers message (pydantic model or dict) as rlvr's {"role", "content"}."""
    get = message.get if isinstance(message, dict) else lambda k, d=None: getattr(message, k, d)
    return {"role": str(get("role", "user")), "content": text_of(get("content"))}


def assistant_turn(text: str) -> tuple[str, list[dict[str, str]], int]:
    """A model turn as an OpenAI-style assistant message: (content, tool calls, unreadable calls).

    Example: 'Let me add.<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    -> ("Let me add.", [{"id": "call_0", "name": "add", "arguments": '{"a": 1}'}], 0).
    """
    calls, bad = [], 0
    for i, call in enumerate(parse_tool_calls(text)):
        if isinstance(call, BadToolCall):  # the ToolEnv's json.loads fails on it and answers with its error
            bad += 1
            calls.append({"id": f"call_{i}", "name": "", "arguments": call.text})
        else:
            calls.append({"id": f"call_{i}", "name": call.name, "arguments": json.dumps(call.arguments)})
    content = text[: text.index(OPEN)].strip() if calls else text
    return content, calls, bad


@ENV.register("verifiers")
class Verifiers:
    """A verifiers environment (see the module docstring); constructed once per run."""

    def __init__(self, environment: str, args: dict[str, Any] | None = None, answer_field: str = "answer",
                 timeout_s: Annotated[float, Field(gt=0)] = 120.0, base_dir: Path | None = None):
        self.vf = import_verifiers()
        self.ref = environment
        self.env = self._load(environment, dict(args or {}), base_dir)
        if not isinstance(self.env, self.vf.MultiTurnEnv):
            raise VerifiersError(f"env.environment: {environment!r} gave {type(self.env).__name__}, not a verifiers "
                                 "MultiTurnEnv (SingleTurnEnv, ToolEnv and their subclasses are)")
        self.answer_field = answer_field
        self.timeout_s = timeout_s
        self.loop = _Loop()
        self.client_class = self._client_class()

    def _load(self, ref: str, args: dict[str, Any], base_dir: Path | None) -> Any:
        if ":" in ref:  # my_env.py:load_environment, pkg.mod:load_environment, or an environment object
            obj = load_object(ref, base_dir)  # a relative file: the current folder, then the recipe's
            return obj(**args) if callable(obj) and not isinstance(obj, self.vf.Environment) else obj
        try:  # an installed environment id, as `vf-eval <id>` takes it
            return self.vf.load_environment(ref, **args)
        except Exception as e:
            raise VerifiersError(f"env.environment: cannot load verifiers environment {ref!r}: "
                                 f"{type(e).__name__}: {e}") from e

    def _client_class(self) -> Callable[[Episode], Any]:
        """What the rollout takes as its client, built per episode: a `vf.Client` (verifiers 0.1.12
        and later), or before that an object shaped like openai's AsyncOpenAI."""
        vf = self.vf
        if getattr(vf, "Client", None) is None:
            return OpenAIShaped

        class TurnClient(vf.Client):
            """Not a model: each response is the turn rlvr generated (see the module docstring)."""

            def __init__(self, episode: Episode):
                super().__init__(None)
                self.episode = episode

            def setup_client(self, config: Any) -> None:
                return None

            async def get_response(self, prompt: Any, model: str, sampling_args: Any, tools: Any = None,
                                   **kwargs: Any) -> Any:
                content, calls, _ = assistant_turn(await self.episode.turn(prompt))
                message = vf.ResponseMessage(
                    content=content, finish_reason="tool_calls" if calls else "stop", is_truncated=False,
                    tool_calls=[vf.ToolCall(**c) for c in calls] or None)
                return vf.Response(id=f"rlvr-{uuid.uuid4().hex}", created=int(time.time()), model=model,
                                   message=message)

            # the native-format hooks of a real client; get_response above never calls them
            async def to_native_tool(self, tool: Any) -> Any:
                return tool

            async def to_native_prompt(self, messages: Any) -> Any:
                return messages, {}

            async def get_native_response(self, *args: Any, **kwargs: Any) -> Any:
                raise NotImplementedError

            async def raise_from_native_response(self, response: Any) -> None:
                return None

            async def from_native_response(self, response: Any) -> Any:
                return response

            async def close(self) -> None:
                return None

        return TurnClient

    def _input(self, row: dict[str, Any]) -> dict[str, Any]:
        """A verifiers RolloutInput from a dataset row: the prompt (a string becomes the env's system
        prompt, if any, and one user message), the gold answer, and `info` when present."""
        prompt = row.get("prompt", "")
        if isinstance(prompt, str):
            messages = [{"role": "system", "content": self.env.system_prompt}] if self.env.system_prompt else []
            prompt = messages + [{"role": "user", "content": prompt}]
        info = row.get("info") or {}
        return {"prompt": prompt, "answer": str(row.get(self.answer_field, "") or ""), "info": info,
                "example_id": row.get("example_id", 0)}

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The environment's tools in OpenAI's function format, for the chat template (`data.tool_schemas`):
        `oai_tools` as verifiers up to 0.2 keeps them, or 0.3's provider-agnostic `tool_defs`
        (name, description, parameters) in that format."""
        if oai := getattr(self.env, "oai_tools", None):
            return [dict(t) for t in oai]
        return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": dict(t.parameters)}}
                for t in getattr(self.env, "tool_defs", None) or []]

    def start(self, row: dict[str, Any]) -> Episode:
        """Starts verifiers' rollout of the row; returns once it asks for the first model turn."""
        try:
            return self.loop.run(self._start(self._input(row), id(row)), self.timeout_s)
        except TimeoutError:
            raise VerifiersError(f"env verifiers ({self.ref}): the rollout did not ask for a first model turn "
                                 f"within env.timeout_s = {self.timeout_s:g} s (its setup_state hangs?)") from None

    async def _start(self, rollout_input: dict[str, Any], group: int) -> Episode:
        ep = Episode(asyncio.Queue(), group=group)
        ep.task = asyncio.ensure_future(self._play(ep, rollout_input))
        ask = await self._next_ask(ep)
        if ask is not None:
            ep.seen = len(ask[0])
        return ep

    async def _play(self, ep: Episode, rollout_input: dict[str, Any]) -> Any:
        state = await self.env.rollout(rollout_input, self.client_class(ep), "rlvr", {})
        ep.state, ep.end = state, str(state.get("stop_condition") or "env")
        return state

    async def _next_ask(self, ep: Episode) -> tuple[list[Any], asyncio.Future] | None:
        """The rollout's next ask for a model turn, or None when it returned instead."""
        assert ep.task is not None
        ask = asyncio.ensure_future(ep.asks.get())
        await asyncio.wait({ask, ep.task}, return_when=asyncio.FIRST_COMPLETED)
        if ask.done():
            ep.pending = ask.result()[1]
            return ask.result()
        ask.cancel()
        ep.pending = None
        if not ep.task.cancelled() and ep.task.exception() is not None:
            e = ep.task.exception()
            raise VerifiersError(f"env verifiers ({self.ref}): the environment's rollout raised "
                                 f"{type(e).__name__}: {e}") from e
        return None

    def respond(self, state: Episode, turn: str) -> Reply:
        """Hands the turn to the rollout; its next messages are the reply, its end ends the episode."""
        try:
            return self.loop.run(self._respond(state, turn), self.timeout_s)
        except TimeoutError:
            self.loop.run(self._cancel(state))
            return Reply.end("env_timeout")

    async def _respond(self, ep: Episode, turn: str) -> Reply:
        if ep.pending is None:  # the rollout returned before asking (setup ended it)
            return Reply.end(ep.end or "env")
        _, calls, bad = assistant_turn(turn)
        tools = getattr(self.env, "tool_map", {})  # by tool, as ToolEnvironment counts: unknown names are errors
        counts: dict[str, int] = {}
        for c in calls:
            if c["name"] in tools:
                counts[c["name"]] = counts.get(c["name"], 0) + 1
        ep.pending.set_result(turn)
        t0 = time.perf_counter()
        ask = await self._next_ask(ep)
        if ask is None:
            return Reply.end(ep.end, tool_calls=counts, tool_errors=bad, tool_s=time.perf_counter() - t0)
        prompt = ask[0]
        new = [as_chat(m) for m in prompt[ep.seen + 1:]]  # after the model's own turn
        ep.seen = len(prompt)
        return Reply(new, False, "", counts, bad, time.perf_counter() - t0)

    async def _cancel(self, ep: Episode) -> None:
        if ep.task is not None and not ep.task.done():
            ep.task.cancel()
            await asyncio.gather(ep.task, return_exceptions=True)

    def finish(self, states: list[Episode], ends: list[str]) -> list[dict[str, Any]]:
        """Ends the rollouts rlvr stopped first, then scores the episodes with the rubric, a group
        (the episodes of one row) at a time as verifiers' trainers do (`score_group`: group reward
        functions see the whole group), all groups concurrently."""
        return self.loop.run(self._finish(states), self.timeout_s * max(len(states), 1))

    async def _finish(self, episodes: list[Episode]) -> list[dict[str, Any]]:
        for ep in episodes:
            if ep.pending is not None and not ep.pending.done():  # rlvr ended it (turns or tokens)
                ep.pending.set_exception(self.vf.OverlongPromptError("the trainer ended the episode"))
        await asyncio.gather(*(ep.task for ep in episodes if ep.task is not None), return_exceptions=True)
        groups: dict[int, list[Any]] = {}
        for ep in episodes:
            if ep.state is not None:  # not cancelled (env_timeout)
                groups.setdefault(ep.group, []).append(ep.state)
        await asyncio.gather(*(self._score(states) for states in groups.values()))
        return [{"reward": 0.0, "metrics": {}, "stop_condition": ep.end or "env_timeout"} if ep.state is None else
                {"reward": ep.state.get("reward"), "metrics": dict(ep.state.get("metrics") or {}),
                 "stop_condition": ep.end} for ep in episodes]

    async def _score(self, states: list[Any]) -> None:
        if self.env.score_rollouts:
            await self.env.rubric.score_group(states)
        else:
            await self.env.rubric.dummy_score_group(states)
        cleanup = getattr(self.env.rubric, "cleanup", None)  # verifiers 0.1.12 and later
        for state in states if cleanup is not None else []:
            await cleanup(state)
