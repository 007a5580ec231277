"""Metric naming helpers and sinks. Names follow the stages: `rollout/len_mean`,
`reward/<name>/mean`, `advantage/zero_std_frac`, `learner/clip_frac`, `perf/rollout_tokens_per_s`,
`eval/accuracy`.

`rlvr.metrics.plot` (matplotlib) is imported on its own so training does not pay for it.
"""

from rlvr.metrics.logger import MetricsLogger
from rlvr.metrics.passk import pass_at_k, summarize_eval
from rlvr.metrics.stats import masked_mean, tensor_stats

__all__ = ["MetricsLogger", "masked_mean", "pass_at_k", "summarize_eval", "tensor_stats"]
