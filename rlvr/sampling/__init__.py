"""Stage 0, sampling: prompt samplers and sample allocators, one module per method (each registers
itself when rlvr.registry looks a name up)."""
