"""Two verifiers environments, written the way verifiers users write them (classic API), for the
adapter's tests: `load_environment` returns a `vf.MultiTurnEnv` / `vf.ToolEnv` with a rubric."""

import verifiers as vf
from datasets import Dataset

ROWS = [{"question": "Guess my number (1-10).", "answer": "7"}]


def field(message, key):
    """A message's field: dicts before verifiers 0.1.12, pydantic models after."""
    return message.get(key) if isinstance(message, dict) else getattr(message, key)


def said(completion):
    """The assistant messages' contents."""
    return [str(field(m, "content") or "") for m in completion if field(m, "role") == "assistant"]


class GuessEnv(vf.MultiTurnEnv):
    """Says "higher" or "lower" until the guess (the reply's last word) is the answer."""

    async def env_response(self, messages, state, **kwargs):
        guess = (str(field(messages[-1], "content")).strip().split() or ["?"])[-1]
        secret = int(state["answer"])
        if not guess.isdigit():
            return [{"role": "user", "content": "a number, please"}]
        if int(guess) == secret:
            state["final_env_response"] = [{"role": "user", "content": "correct"}]
            return state["final_env_response"]
        return [{"role": "user", "content": "higher" if int(guess) < secret else "lower"}]


def found(completion, answer, **kwargs) -> float:
    """1.0 when some assistant turn ends with the answer."""
    return float(any(c.strip().endswith(answer) for c in said(completion)))


def guesses(completion, **kwargs) -> float:
    return float(len(said(completion)))


def load_guess(max_turns: int = 5, penalty: float = 0.0):
    rubric = vf.Rubric(funcs=[found, guesses], weights=[1.0, -penalty])
    return GuessEnv(dataset=Dataset.from_list(ROWS), rubric=rubric, max_turns=max_turns)


def multiply(a: int, b: int) -> int:
    """Multiplies two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def final_answer(completion, answer, **kwargs) -> float:
    """1.0 when the last assistant message's content is the answer."""
    return float(said(completion)[-1].strip() == answer)


def load_tools(max_turns: int = 4):
    return vf.ToolEnv(dataset=Dataset.from_list([{"question": "12*7?", "answer": "84"}]), tools=[multiply],
                      rubric=vf.Rubric(funcs=[final_answer]), max_turns=max_turns,
                      system_prompt="Use the multiply tool.")


def fewest_guesses(completions, **kwargs) -> list[float]:
    """A group reward function: 1.0 for the episodes of the group with the fewest guesses."""
    counts = [len(said(c)) for c in completions]
    return [float(n == min(counts)) for n in counts]


def load_guess_group():
    rubric = vf.Rubric(funcs=[found, fewest_guesses], weights=[1.0, 0.5])
    return GuessEnv(dataset=Dataset.from_list(ROWS), rubric=rubric, max_turns=5)
