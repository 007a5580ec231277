"""A user stratum function, named from YAML (`rollout.stratum: examples/strata.py:length_bucket`).

A stratum key is any hashable label of a trajectory's structure; stratified advantages normalise
rewards within samples that share it.
"""


def length_bucket(completion: str) -> str:
    """"short" for replies of at most one character, "long" otherwise."""
    return "short" if len(completion) <= 1 else "long"
