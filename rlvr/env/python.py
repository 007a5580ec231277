"""`env: {name: python}`: one tool, `python(code)`, that runs model-written code in a sandbox.

The code runs in a subprocess under time, memory, network and file-system limits (see
rlvr/env/sandbox.py), with the standard library only; the tool's result is what it printed
(stdout, then stderr such as a traceback), cut to `max_output_chars`, with a last line saying
when it was killed at the time limit or exited with an error. A reply without a call is the
answer. Example call:

    <tool_call>
    {"name": "python", "arguments": {"code": "print(sum(range(101)))"}}
    </tool_call>                                  -> the tool message "5050"
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlvr.env.base import ToolEnvironment
from rlvr.env.sandbox import run_sandboxed
from rlvr.registry import ENV


@ENV.register("python")
class Python(ToolEnvironment):
    """Sandboxed Python; timeout_s and memory_mb per run, max_output_chars of output shown."""

    def __init__(self, timeout_s: Annotated[float, Field(gt=0)] = 5.0, memory_mb: Annotated[int, Field(ge=64)] = 512,
                 max_output_chars: Annotated[int, Field(ge=1)] = 2000,
                 max_calls_per_turn: Annotated[int, Field(ge=1)] = 2):
        # the sandbox kills a run at timeout_s itself; the tool's own timeout only guards the parent
        super().__init__(tool_timeout_s=timeout_s + 10.0, max_calls_per_turn=max_calls_per_turn)
        self.timeout_s, self.memory_mb, self.max_output_chars = timeout_s, memory_mb, max_output_chars
        self.tools = {"python": self.python}

    def python(self, code: str) -> str:
        """Run `code`; its output as the tool's answer."""
        if not isinstance(code, str):
            raise ValueError('"code" must be a string of Python source')
        result = run_sandboxed(code, timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return result.text(self.max_output_chars) or "[no output]"
