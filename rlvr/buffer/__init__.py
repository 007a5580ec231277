from rlvr.buffer.pack import (
    as_batch,
    informative_rows,
    make_micro_batch,
    pack,
    plan_micro_batches,
    split_mini_batches,
)

__all__ = ["as_batch", "informative_rows", "make_micro_batch", "pack", "plan_micro_batches", "split_mini_batches"]
