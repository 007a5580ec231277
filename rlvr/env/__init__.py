"""Multi-turn environments: the seam (`env:` in a recipe), tool calls, and the episode runner.

Built-ins register by being in this package (rlvr/env/<name>.py); a user's environment is named
`file.py:Class` like every other plug-in. See rlvr/env/base.py for the contract.
"""

from rlvr.env.base import Environment, Reply, ToolEnvironment
from rlvr.env.episodes import run_episodes
from rlvr.env.tool_calls import BadToolCall, ToolCall, format_tool_call, parse_tool_calls

__all__ = ["BadToolCall", "Environment", "Reply", "ToolCall", "ToolEnvironment", "format_tool_call",
           "parse_tool_calls", "run_episodes"]
