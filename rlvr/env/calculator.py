"""`env: {name: calculator}`: one tool, `calculator(expression)`, that evaluates arithmetic.

The model may call it any number of times before answering; a reply without a call is the answer.
The expression is read with Python's `ast` and only numbers, + - * / // % ** and parentheses are
evaluated (no names, no calls, exponents and results bounded), so a model cannot run code
through it. Example:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "(47 + 38) * 2"}}
    </tool_call>                                  -> the tool message "170"
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Annotated

from pydantic import Field

from rlvr.env.base import ToolEnvironment
from rlvr.registry import ENV

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_MAX_EXPONENT = 64
_MAX_DIGITS = 60
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")  # "007" -> "7"; "0.5", "10.05" and "100" untouched


def evaluate(expression: str) -> str:
    """The value of an arithmetic expression as text (an integer when it is one).

    Integers may have leading zeros ("07 + 85", as zero-padded operands are written), which
    Python's own syntax refuses. Example: "(47 + 38) * 2" -> "170"; "07+85" -> "92"; "7 / 2" -> "3.5";
    "2 ** 100" -> ValueError (exponent over 64).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("expression must be a non-empty string, e.g. \"12 * (3 + 4)\"")
    try:
        tree = ast.parse(_LEADING_ZEROS.sub("", expression.strip()), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot read {expression!r} as arithmetic") from e
    value = _eval(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise ValueError(f"the result has more than {_MAX_DIGITS} digits")
    return text


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is over {_MAX_EXPONENT}")
        try:
            return _OPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    raise ValueError(f"only numbers, + - * / // % ** and parentheses are allowed, not {type(node).__name__}")


@ENV.register("calculator")
class Calculator(ToolEnvironment):
    """The calculator tool; tool_timeout_s, max_calls_per_turn and tool_process as in ToolEnvironment."""

    def __init__(self, tool_timeout_s: Annotated[float, Field(gt=0)] = 5.0,
                 max_calls_per_turn: Annotated[int, Field(ge=1)] = 4, tool_process: bool = False):
        super().__init__(tool_timeout_s, max_calls_per_turn, tool_process)
        self.tools = {"calculator": evaluate}
