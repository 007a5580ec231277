"""A user reward named from YAML, with no edit inside rlvr:

    reward:
      functions:
        - {name: examples/rewards.py:brevity, weight: 0.1, kwargs: {target_chars: 40}}
"""


def brevity(prompt: str, completion: str, row: dict, *, target_chars: int = 40) -> tuple[float, dict[str, float]]:
    """1 for a completion of at most `target_chars` characters, falling linearly to 0 at twice that.

    Returns the score and an extra metric (logged as reward/brevity/chars).
    """
    n = len(completion)
    score = 1.0 if n <= target_chars else max(0.0, 2.0 - n / target_chars)
    return score, {"chars": float(n)}
