"""Import every built-in plug-in module once so the registries know their names."""

import rlvr.advantage
import rlvr.learner.aggregation
import rlvr.learner.policy_loss
import rlvr.sampling  # noqa: F401

# Arguments rlvr passes to plug-in constructors itself (never set in YAML).
CONTEXT_ARGS = ("num_prompts", "seed", "samples_per_prompt", "prompts_per_step", "max_new_tokens", "prompt_uids",
                "advantage")
