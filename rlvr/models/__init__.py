"""Model builders that need no hub: tiny random causal LMs for tests, debugging and CPU recipes."""

from rlvr.models.tiny import build_tiny_model, build_tiny_tokenizer, ensure_tiny_model

__all__ = ["build_tiny_model", "build_tiny_tokenizer", "ensure_tiny_model"]
