"""Import every built-in plug-in module once so the registries know their names."""

import rlvr.advantage  # noqa: F401
import rlvr.learner.aggregation  # noqa: F401
import rlvr.learner.policy_loss  # noqa: F401
import rlvr.sampling  # noqa: F401

# Arguments rlvr passes to plug-in constructors itself (never set in YAML).
CONTEXT_ARGS = ("num_prompts", "seed", "samples_per_prompt", "prompts_per_step", "max_new_tokens")
