from rlvr.buffer.pack import make_micro_batch, pack, plan_micro_batches, split_mini_batches

__all__ = ["make_micro_batch", "pack", "plan_micro_batches", "split_mini_batches"]
