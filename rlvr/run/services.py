"""The trainer's side of `rlvr.types.Services`: what stateful plug-ins may ask of the running trainer.

Some methods need work beyond one step's samples: VAS re-scores every prompt every few steps,
GVM estimates acceptance rates and gradient norms before each allocation, SPO initialises its
tracker from an offline pass and measures policy drift on stored responses. They do it through
this object, typed as the `Services` Protocol, so they never touch the engine, the learner or the
process group directly.

Every method is collective: all processes call it with the same arguments, each does its share,
and all get the full result back (plug-in state stays identical on every process).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import gather_object

from rlvr.learner.batching import pairs_batch
from rlvr.reward import score_rollouts
from rlvr.rollout import SamplingParams
from rlvr.types import Prompt, PromptBatch


class TrainerServices:
    """`Services` on top of this process's engine, learner and reward runner.

    engine generates, rewards scores, learner computes log-probs and gradients; prompts are the
    training prompts by dataset index, params the rollout's sampling parameters (the default of
    `sample_prompts`), rank and world this process's place in the process group.
    """

    def __init__(self, *, engine: Any, learner: Any, rewards: Any, prompts: list[Prompt], params: SamplingParams,
                 rank: int, world: int):
        self.engine, self.learner, self.rewards = engine, learner, rewards
        self.prompts, self.params = prompts, params
        self.rank, self.world = rank, world

    @property
    def pad_id(self) -> int:
        """The learner's pad token id."""
        return self.learner.pad_id

    def _gather(self, items: list[Any]) -> list[Any]:
        return gather_object(items) if self.world > 1 else items

    def sample_prompts(self, prompt_indices: list[int], samples: int, params: SamplingParams | None = None
                       ) -> list[dict[str, Any]]:
        """Generate `samples` completions for each prompt and score them.

        Returns, per prompt in the given order: {"index", "correct": [bool]*samples,
        "rewards": [float]*samples, "response_ids": [[int]]*samples}.
        """
        mine = list(range(self.rank, len(prompt_indices), self.world))
        local = []
        if not mine and getattr(self.engine, "synced", False):
            # fewer prompts than processes: a sharded model's generate() still needs every process
            self.engine.generate(PromptBatch([], []), params or self.params)
        if mine:
            batch = PromptBatch([self.prompts[prompt_indices[i]] for i in mine], [samples] * len(mine))
            scored = score_rollouts(self.rewards, self.engine.generate(batch, params or self.params))
            ro = scored.rollouts
            for j, i in enumerate(mine):
                rows = (ro.group == j).nonzero().flatten().tolist()
                local.append({
                    "order": i, "index": prompt_indices[i],
                    "correct": [bool(scored.correct[r]) for r in rows],
                    "rewards": [float(scored.rewards[r]) for r in rows],
                    "response_ids": [ro.response_ids[r, : int(ro.widths[r])].tolist() for r in rows],
                })
        return [{k: v for k, v in d.items() if k != "order"}
                for d in sorted(self._gather(local), key=lambda d: d["order"])]

    @torch.no_grad()
    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[torch.Tensor]:
        """Current-policy log-probs (at the rollout temperature) of each response given its prompt."""
        mine = list(range(self.rank, len(prompt_ids), self.world))
        local = []
        if not mine and self.world > 1 and prompt_ids:
            # fewer sequences than processes: the policy's forwards are collective (see
            # Batcher.equalise), so this process scores the first sequence and drops the result
            self.learner.logprobs(pairs_batch(prompt_ids[:1], response_ids[:1], self.learner.pad_id), use_ref=False)
        if mine:
            batch = pairs_batch([prompt_ids[i] for i in mine], [response_ids[i] for i in mine], self.learner.pad_id)
            lp = self.learner.logprobs(batch, use_ref=False)
            local = [(i, lp[j, : len(response_ids[i])]) for j, i in enumerate(mine)]
        return [t for _, t in sorted(self._gather(local), key=lambda x: x[0])]

    def grad_norms(self, prompt_ids: list[list[int]], response_ids: list[list[int]], param_match: str) -> list[float]:
        """Per response, the norm of the gradient of -sum_t log pi(y_t) on the first parameter whose
        name contains `param_match` (GVM's stage 1), computed by the learner (Learner.grad_norms),
        each process for its share of the pairs."""
        mine = list(range(self.rank, len(prompt_ids), self.world))
        norms = self.learner.grad_norms([prompt_ids[i] for i in mine], [response_ids[i] for i in mine], param_match)
        return [g for _, g in sorted(self._gather(list(zip(mine, norms))), key=lambda x: x[0])]

