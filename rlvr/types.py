"""Records that flow between the stages of one training step.

Shape letters, defined here once and used in every docstring and comment of the package:
    D    prompts in the training set (per-prompt state of samplers and allocators is [D])
    P    prompts in a step (one group of samples each; a prompt drawn twice is two groups)
    G    samples per prompt, i.e. the size of a group
    G_j  samples of prompt j, when the allocator gives prompts different counts
    N    samples in the step (N = sum_j G_j, or P * G when all groups have G samples)
    T    response tokens (the padded width of a response tensor)
    T_i  tokens of response i, where responses are kept unpadded (lists of per-sample tensors)
    S    full sequence length (prompt + response) of a micro-batch row
    V    vocabulary size
    B    rows of one micro-batch (B <= N)
    H    hidden size of the model (a parameter such as the token embedding is [V, H])
A suffix names a share: N_r is the samples of process r (the rows this process generated).
A shape is written in brackets, e.g. [N, T]; a Python list of length N is written "N".

    prompts --sampling--> PromptBatch --rollout--> Rollouts --reward--> ScoredRollouts
        --advantage--> AdvantageBatch --buffer--> list[MicroBatch] --learner--> metrics
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Prompt:
    """One dataset row, templated and tokenised once when the dataset loads."""

    uid: str  # stable across runs: "<source>#<row index>"
    text: str  # exactly what the policy is conditioned on (chat template applied)
    token_ids: list[int]
    answer: str | None  # gold answer for verifiers (None when the task has none)
    row: dict[str, Any]  # the original row, handed to reward functions


@dataclass
class PromptBatch:
    """Output of stage 0: which prompts this process generates for, and how many samples each."""

    prompts: list[Prompt]  # P
    samples_per_prompt: list[int]  # P, entry j is G_j


@dataclass
class Rollouts:
    """Output of stage 1. Row n of every tensor is sample n; samples of a prompt are contiguous."""

    prompts: list[Prompt]  # P
    group: torch.Tensor  # [N] long, index into `prompts` (values in 0..P-1)
    response_ids: torch.Tensor  # [N, T] long, right-padded with the pad id
    response_mask: torch.Tensor  # [N, T] float, 1 on generated tokens (EOS included)
    rollout_logprobs: torch.Tensor  # [N, T] float, log p of each sampled token under the engine
    texts: list[str]  # N, decoded responses (special tokens and stop strings removed)
    finish_reason: list[str]  # N, "stop" (EOS or a stop string) or "length"
    # multi-turn episodes (an `env`): the response is every token after the prompt, the model's and
    # the environment's, as ids; response_mask marks the model's (trained and counted), env_mask
    # the environment's (context only); texts hold each episode's last model turn (the answer)
    # and contexts the text before it (earlier turns and the environment's messages).
    env_mask: torch.Tensor | None = None  # [N, T] float, 1 on tokens the environment inserted
    contexts: list[str] | None = None  # N
    episodes: list[dict[str, Any]] | None = None  # N, turns, tool calls and end reason of each episode

    @property
    def lengths(self) -> torch.Tensor:
        """[N] long, generated tokens of each sample (EOS included): the model's tokens only."""
        return self.response_mask.sum(-1).long()

    @property
    def widths(self) -> torch.Tensor:
        """[N] long, tokens of each response, the environment's included (= lengths for one turn)."""
        if self.env_mask is None:
            return self.lengths
        return (self.response_mask + self.env_mask).sum(-1).long()

    @property
    def present(self) -> torch.Tensor:
        """[N, T] float, 1 on every real token of the response (the model's and the environment's)."""
        return self.response_mask if self.env_mask is None else self.response_mask + self.env_mask

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ScoredRollouts:
    """Output of stage 2: rollouts plus rewards."""

    rollouts: Rollouts
    rewards: torch.Tensor  # [N] float, weighted sum of the components
    components: dict[str, torch.Tensor]  # name -> [N] float, unweighted
    correct: torch.Tensor  # [N] bool, the accuracy reward crossed its threshold
    metrics: dict[str, float] = field(default_factory=dict)
    # the estimator's output for these samples when it was computed as their groups completed
    # (an estimator of scope "group", rollout workers: see advantage_scope); None: at stage 3
    estimated: AdvantageOutput | None = None


@dataclass
class AdvantageBatch:
    """Output of stage 3: one scalar advantage (and loss weight) per sample."""

    scored: ScoredRollouts
    advantages: torch.Tensor  # [N] float
    weights: torch.Tensor  # [N] float, per-sample loss weight (1 unless an estimator sets it)
    old_logprobs: torch.Tensor | None  # [N, T] learner log-probs before the update, if computed
    ref_logprobs: torch.Tensor | None  # [N, T] reference-model log-probs, if a KL term needs them
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LossNorm:
    """Global normalisers of one optimiser step (all processes, all micro-batches).

    Aggregations divide by these instead of per-micro-batch counts, so the gradient does not
    depend on how the step's batch is split.
    """

    tokens: float  # sum of the [N, T] response-mask entries of the step
    sequences: float  # N, the step's number of samples
    max_response_tokens: int  # configured constant (Dr. GRPO), never a tensor width
    # response tokens of the rows that go through the forward pass (fewer than `tokens` when rows whose
    # loss is exactly 0 are left out: Batcher); per-token metrics average over these. None: `tokens`
    kept_tokens: float | None = None


@dataclass
class MicroBatch:
    """One forward/backward of the learner.

    Prompts are left-padded to a common width and responses right-padded, so the response of
    every row occupies the same last T columns and its log-probs are one slice of the logits.
    """

    input_ids: torch.Tensor  # [B, S] long: prompts left-padded, then responses right-padded
    attention_mask: torch.Tensor  # [B, S] long
    response_ids: torch.Tensor  # [B, T] long, the last T columns of input_ids
    response_mask: torch.Tensor  # [B, T] float
    advantages: torch.Tensor  # [B] float
    weights: torch.Tensor  # [B] float
    old_logprobs: torch.Tensor | None  # [B, T] float
    ref_logprobs: torch.Tensor | None  # [B, T] float
    rollout_logprobs: torch.Tensor  # [B, T] float
    norm: LossNorm
    index: torch.Tensor  # [B] long, row (0..N-1) of each sample in the step's AdvantageBatch


@dataclass
class AdvantageInput:
    """What an advantage estimator sees: the whole step batch (all processes), per sample."""

    group: torch.Tensor  # [N] long, samples with the same id answer the same prompt in this step
    rewards: torch.Tensor  # [N] float, weighted total
    components: dict[str, torch.Tensor]  # name -> [N] float
    lengths: torch.Tensor  # [N] long, response tokens
    prompt_uids: list[str]  # N, stable prompt ids (for per-prompt state)
    step: int
    strata: list[Any] | None = None  # N, structural stratum key per sample (stratified estimators)


def advantage_scope(estimator: Any) -> str:
    """What an estimator's advantage of a sample depends on: "group" (only the samples of its own
    group, e.g. GRPO: it may be computed as soon as the group is scored) or "batch" (the whole
    step batch, e.g. BNPO's Beta fit or ΔL's length weights: it waits for every group of the
    step). An estimator says so with a `scope` attribute; one that does not is "batch".

    Example: GRPO.scope == "group"; a user estimator without the attribute -> "batch".
    """
    scope = getattr(estimator, "scope", "batch")
    if scope not in ("group", "batch"):
        raise ValueError(f"advantage estimator {type(estimator).__name__}: scope must be 'group' or 'batch', "
                         f"got {scope!r}")
    return scope


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [N] float
    weights: torch.Tensor | None = None  # [N] float per-sample loss weight, None means all ones
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StepOutcome:
    """What stateful plug-ins see after the update of a step: the whole step batch, all processes.

    Plug-ins with an `observe(outcome, services)` method get this (P5 in the spec): e.g. VADE
    updates its posteriors from group results, SPO its tracker.
    """

    step: int
    prompt_indices: list[int]  # P, dataset index of each group's prompt
    group: torch.Tensor  # [N] long, index into prompt_indices (values in 0..P-1)
    prompt_uids: list[str]  # N
    rewards: torch.Tensor  # [N] float (weighted total, before any KL shaping)
    correct: torch.Tensor  # [N] bool
    lengths: torch.Tensor  # [N] long
    response_ids: list[list[int]]  # N, generated tokens (EOS included)


@runtime_checkable
class Services(Protocol):
    """What stateful plug-ins may ask of the running trainer in `refresh(step, services)` and
    `observe(outcome, services)`: work beyond the step's own batch (VAS re-scores every prompt, GVM
    measures acceptance rates and gradient norms, SPO runs an offline pass and measures drift).

    Nothing else of the trainer is theirs to touch: no engine, learner, reward runner or process group
    (tests/unit/test_services.py checks the plug-in modules). Every method is collective: all
    processes call it with the same arguments, each does its share, and all get the full result.
    The trainer's implementation is `TrainerServices` (rlvr/run/services.py).
    """

    @property
    def prompts(self) -> list[Prompt]:
        """The training prompts, by dataset index (what `sample_prompts` and `StepOutcome` index)."""
        ...

    @property
    def pad_id(self) -> int:
        """The token id that pads responses in the learner's tensors."""
        ...

    def sample_prompts(self, prompt_indices: list[int], samples: int) -> list[dict[str, Any]]:
        """Generate `samples` (G) responses to each given prompt with the current policy and score them.

        prompt_indices P -> P dicts in the given order: {"index": dataset index, "correct": G bools,
        "rewards": G floats, "response_ids": G token-id lists (no padding)}.
        """
        ...

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[torch.Tensor]:
        """Current-policy log-probs (at the rollout temperature) of each response given its prompt.

        prompt_ids N token lists, response_ids N token lists (response i has T_i tokens) -> N tensors [T_i].
        """
        ...

    def grad_norms(self, prompt_ids: list[list[int]], response_ids: list[list[int]], param_match: str) -> list[float]:
        """Per response, the norm of the gradient of −Σ_t log π(y_t) on the first parameter whose name
        contains `param_match`. prompt_ids N, response_ids N token lists -> N floats."""
        ...
