"""A user reward file written to a temp dir, as a user's recipe would name it ("file.py:fn")."""

import textwrap

import pytest

USER_REWARDS = '''
import math
import os
import time


def length_bonus(prompt, completion, row, scale=1.0):
    return scale * len(completion)


def batched_length(prompts, completions, rows, scale=1.0):
    return [scale * len(c) for c in completions]


def wrong_count(prompts, completions, rows):
    return [1.0]


def with_extra(prompt, completion, row):
    return 1.0, {"extra": 2.0, "length": float(len(completion))}


def fragile(prompt, completion, row):
    if completion == "boom":
        raise ZeroDivisionError("boom on purpose")
    if completion == "nan":
        return math.nan
    if completion == "text":
        return "1.0"
    return 1.0


def sleepy(prompt, completion, row):
    if completion == "sleep":
        time.sleep(30)
    return 1.0


def stubborn(prompt, completion, row):
    """Hangs in a way the per-sample timer cannot end: it swallows even BaseException."""
    if completion == "hang":
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                time.sleep(30)
            except BaseException:
                pass
    return 1.0


def crash(prompt, completion, row):
    if completion == "crash":
        os._exit(3)
    return 1.0


def whoami(prompt, completion, row):
    import torch

    return 1.0, {"pid": float(os.getpid()), "torch_threads": float(torch.get_num_threads())}
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_REWARDS))
    return str(path)
