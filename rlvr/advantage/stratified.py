"""Stratified GRPO: Stratified Advantage Normalization (SAN), Zhu et al., arXiv 2510.06214 (ICML 2026).

Why: in agentic RL the trajectories of one prompt differ in structure (how many search or tool
calls they made), and structure correlates with reward. One group baseline then compares
trajectories that are not alike. Splitting r_i - mu = (r_i - mu_k) + (mu_k - mu), the second term,
the *cross-stratum bias*, is the same for every member of stratum k and only says which stratum
a trajectory fell into. SAN normalises inside each stratum, which removes it.

For one prompt group with mean mu and std sigma, and stratum B_k (same key) with mu_k, sigma_k:
    A_GN(i)  = (r_i - mu)   / (sigma   + eps)          plain GRPO over the whole group
    A_SAN(i) = (r_i - mu_k) / (sigma_k + eps),  i in B_k
    A(i)     = alpha * A_SAN(i) + (1 - alpha) * A_GN(i)
A set of one sample (a singleton stratum, or a prompt with one response) has no spread: its
sigma is taken as 0 and its advantage is 0 for every alpha. This is deliberately *not* verl's GRPO
rule (mean 0, std 1, A = r / (1 + eps)); a set whose rewards are all equal also gets exactly 0.

No authors' code is public; this follows the paper's equations and rlvr's spec
(shared/spec/algorithms.md §3). The experimental alpha, eps and std convention are not stated
there, so all three are parameters.

The stratum key of each sample comes from `AdvantageInput.strata`, filled by a stratum function
applied to the response text; `count_search_calls` and `count_tool_calls` below are built in
(address them as "rlvr.advantage.stratified:count_search_calls").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Annotated, Any, Literal, NamedTuple

import torch
from pydantic import Field

from rlvr.advantage.grpo import group_stats, zero_std_fraction
from rlvr.registry import ADVANTAGE
from rlvr.types import AdvantageInput, AdvantageOutput

# ---- stratum-key functions: response text -> hashable key ------------------------------------


def count_tool_calls(text: str, *, tag: str = "<tool_call>") -> int:
    """Number of tool calls in a response: occurrences of the opening `tag` (Hermes/Qwen style).

    Example: "<tool_call>a</tool_call> ok <tool_call>b</tool_call>" -> 2; "no tools" -> 0.
    """
    return text.count(tag)


def count_search_calls(text: str, *, tag: str = "<search>") -> int:
    """Number of search calls in a response (Search-R1 format, the paper's stratum key).

    Example: "<search>x</search> ... <search>y</search> <answer>z</answer>" -> 2.
    """
    return text.count(tag)


# built-in stratum functions by short name (each is also addressable as "module:attr")
STRATUM_FUNCTIONS = {"tool_calls": count_tool_calls, "search_calls": count_search_calls}


# ---- the maths --------------------------------------------------------------------------------


def dense_ids(keys: Iterable[Hashable]) -> torch.Tensor:
    """One integer per distinct hashable key, numbered in order of first appearance -> [N] long.

    Example: ["x", 3, "x", (1, 2)] -> [0, 1, 0, 2].
    """
    index: dict[Hashable, int] = {}
    try:
        ids = [index.setdefault(k, len(index)) for k in keys]
    except TypeError as e:
        raise TypeError(f"stratum keys must be hashable (int, str, tuple, ...): {e}") from None
    return torch.tensor(ids, dtype=torch.long)


def stratum_ids(group: torch.Tensor, strata: list[Any], *, batch_level: bool = False):
    """Baseline groups and strata as dense ids -> (group [N] long, stratum [N] long).

    Per prompt (default): the baseline group is the prompt's group and stratum k of a group is
    its samples with key k, so equal keys in different groups are different strata.
    `batch_level`: the whole batch is one group, and a stratum pools every sample with key k,
    whatever its prompt (the "single global baseline" reading of §3.3).
    Example: group [0, 0, 1], strata [2, 2, 2] -> ([0, 0, 1], [0, 0, 1]); batch_level -> ([0, 0, 0], [0, 0, 0]).
    """
    if batch_level:
        return torch.zeros_like(group, dtype=torch.long), dense_ids(strata)
    return group.long(), dense_ids(zip(group.tolist(), strata))


def standardise(values: torch.Tensor, ids: torch.Tensor, *, epsilon: float = 1e-6, ddof: int = 1) -> torch.Tensor:
    """(x - mean_set) / (std_set + epsilon) inside each set of equal ids; 0 where a set has no spread.

    values [N], ids [N] -> [N] float32. A set of one sample, or one whose values are all equal,
    gets exactly 0 (its std is 0 by definition): no baseline, no signal.
    Example (eps 0, ddof 1): values [1, 0, 1], ids [0, 0, 1] -> [0.7071, -0.7071, 0].
    """
    mean, std, _ = group_stats(values, ids, ddof)
    x = values.float()
    return torch.where(std > 0, (x - mean) / (std + epsilon), torch.zeros_like(x))


class StratifiedAdvantages(NamedTuple):
    advantages: torch.Tensor  # [N] the blend alpha * san + (1 - alpha) * global_
    san: torch.Tensor  # [N] A_SAN, normalised inside each stratum
    global_: torch.Tensor  # [N] A_GN, normalised inside each baseline group


def stratified_advantages(
    rewards: torch.Tensor,
    group: torch.Tensor,
    stratum: torch.Tensor,
    *,
    alpha: float = 1.0,
    epsilon: float = 1e-6,
    ddof: int = 1,
) -> StratifiedAdvantages:
    """SAN blended with the global group estimator (arXiv 2510.06214; spec §3.1).

        A_GN  = (r - mu_g) / (sigma_g + eps),  A_SAN = (r - mu_k) / (sigma_k + eps)
        A     = alpha * A_SAN + (1 - alpha) * A_GN

    rewards [N]; group [N] ids of baseline groups; stratum [N] ids of strata, each stratum inside
    one group (see `stratum_ids`) -> StratifiedAdvantages of three [N] float32 tensors.
    Singleton or constant sets give 0 (see `standardise`).

    Worked example (eps 1e-6, ddof 1), one prompt, rewards [1, 0, 1], search calls [0, 0, 1]:
        group:     mu = 2/3, sigma = 0.5774  -> A_GN  = [0.5774, -1.1547, 0.5774]
        stratum 0: {1, 0}, mu = 0.5, sigma = 0.7071 -> A_SAN = [0.7071, -0.7071, .]
        stratum 1: {1} alone -> A_SAN = 0         -> A_SAN = [0.7071, -0.7071, 0]
        alpha 0.5: A = [0.6422, -0.9309, 0.2887]
    """
    san = standardise(rewards, stratum, epsilon=epsilon, ddof=ddof)
    glob = standardise(rewards, group, epsilon=epsilon, ddof=ddof)
    return StratifiedAdvantages(alpha * san + (1.0 - alpha) * glob, san, glob)


def stratum_decomposition(rewards: torch.Tensor, group: torch.Tensor, stratum: torch.Tensor):
    """Unnormalised split r - mu = (r - mu_k) + (mu_k - mu) -> (r - mu, r - mu_k, mu_k - mu), each [N].

    The last term is the cross-stratum bias SAN removes; its mean square over a group,
    (1/K) sum_k n_k (mu_k - mu)^2, is the between-strata variance the paper's variance gap names.
    Example: rewards [1, 0, 1], group [0, 0, 0], stratum [0, 0, 1] ->
        r - mu = [1/3, -2/3, 1/3], r - mu_k = [0.5, -0.5, 0], bias = [-1/6, -1/6, 1/3].
    """
    mu, _, _ = group_stats(rewards, group)
    mu_k, _, _ = group_stats(rewards, stratum)
    r = rewards.float()
    return r - mu, r - mu_k, mu_k - mu


# ---- the estimator (advantage seam) -----------------------------------------------------------


@ADVANTAGE.register("stratified")
class Stratified:
    """Stratified GRPO: SAN inside strata of equal structural key, blended with group GRPO by `alpha`.

    alpha 1 is pure SAN, alpha 0 is GRPO with singleton groups at 0 (not verl's r / (1 + eps)).
    `batch_level` uses the whole step batch as the baseline group and pools strata across prompts.
    Needs `AdvantageInput.strata` (a stratum function must be configured).
    Metrics: advantage/num_strata (strata normalised over), advantage/cross_stratum_bias
    (mean over samples of |mu_k - mu|, in reward units), advantage/zero_std_frac.
    """

    @staticmethod
    def problems(cfg: Any) -> list[str]:
        """Checked by `rlvr config validate`: without a stratum function there are no strata."""
        if cfg.rollout.stratum is not None:
            return []
        return ["advantage.name: stratified needs rollout.stratum (got null): a function from a completion's "
                "text to its stratum key, e.g. rlvr.advantage.stratified:count_tool_calls"]

    def __init__(
        self,
        alpha: Annotated[float, Field(ge=0, le=1)] = 1.0,
        epsilon: Annotated[float, Field(ge=0)] = 1e-6,
        ddof: Literal[0, 1] = 1,
        batch_level: bool = False,
    ):
        self.alpha = alpha
        self.epsilon = epsilon
        self.ddof = ddof
        self.batch_level = batch_level

    @property
    def scope(self) -> str:
        """"batch" with `batch_level` (strata pooled across the step's prompts), else "group"."""
        return "batch" if self.batch_level else "group"

    def __call__(self, inp: AdvantageInput) -> AdvantageOutput:
        if inp.strata is None:
            raise ValueError(
                "advantage 'stratified' needs a stratum key per sample but AdvantageInput.strata is None: "
                "configure a stratum function, e.g. 'rlvr.advantage.stratified:count_search_calls' "
                "or 'rlvr.advantage.stratified:count_tool_calls'"
            )
        strata = inp.strata.tolist() if isinstance(inp.strata, torch.Tensor) else list(inp.strata)
        n = inp.rewards.numel()
        if len(strata) != n:
            raise ValueError(f"advantage 'stratified': got {len(strata)} stratum keys for {n} samples")
        group, stratum = stratum_ids(inp.group, strata, batch_level=self.batch_level)
        out = stratified_advantages(
            inp.rewards, group, stratum, alpha=self.alpha, epsilon=self.epsilon, ddof=self.ddof
        )
        metrics: dict[str, float] = {}
        if n:
            _, _, bias = stratum_decomposition(inp.rewards, group, stratum)
            metrics = {
                "advantage/num_strata": float(int(stratum.max()) + 1),
                "advantage/cross_stratum_bias": float(bias.abs().mean()),
                "advantage/zero_std_frac": zero_std_fraction(inp.rewards, group),
            }
        return AdvantageOutput(out.advantages, None, metrics)
