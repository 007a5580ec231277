"""Per-token log-probs (and entropy) of the response tokens of a micro-batch.

Two ways to get them, equal to float32 rounding (tests/unit/learner/test_chunked_logprobs.py):

- full logits: the model's forward returns the logits of the last T+1 positions, [B, T, V] in
  float32, and log-probs come from one logsumexp and gather over them;
- chunked (`chunk_tokens` > 0): for the length of one forward, the LM head's `forward` is replaced
  by one that takes the final hidden states [B, T+1, H], applies the original head `chunk_tokens`
  positions at a time (each chunk under activation checkpointing) and returns the log-probs
  [B, T] in place of logits. Neither the forward nor the backward then holds more than
  chunk_tokens x V logits; at a 152k vocabulary that decides the learner's peak memory
  (benchmarks/logprob_memory.py).

The head is still called once, as a module, inside the (possibly wrapped) model's own forward, so
DDP's reducer, FSDP2's all-gathers and DeepSpeed ZeRO-3's parameter fetches and their backward
hooks run exactly as for an ordinary forward (calling the head module once per chunk instead made
FSDP2 reshard it after the first chunk's backward: a segfault). It needs logits = lm_head(final
hidden state), which holds for the families in `PLAIN_HEAD_FAMILIES`; any other model (logit
soft-capping, logit scaling) takes the full path.

Shared prompts (`share_prompts`): the samples of a GRPO group repeat one prompt, and without
sharing every sample runs it through the model again (on short-answer tasks the prompt is most of
the tokens). With sharing, each distinct prompt of the micro-batch goes through the model once;
its keys and values (a KV cache that keeps its autograd graph) are indexed out to the group's rows,
and the responses run as a second forward on top of them. The hidden states of the last prompt
position and of the responses then go through the head as above. The gradient reaching a shared
prompt is the sum of its samples' gradients, as in the full pass, so the values and gradients are
those of the unshared pass to float rounding (tests/unit/learner/test_shared_prompts.py). It needs
a plain head (the head is applied to hidden states put together from two forwards), a model
without gradient checkpointing (which turns the cache off) and no sliding window narrower than
the sequence (which would crop the cache), and one process (the learner decides:
two forwards before one backward are not what DDP, FSDP2 or ZeRO expect of a step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint

from rlvr.types import MicroBatch

# config.model_type of the HF causal LMs whose logits are exactly lm_head(final hidden state)
PLAIN_HEAD_FAMILIES = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


def response_logprobs(
    model: torch.nn.Module, mb: MicroBatch, temperature: float, with_entropy: bool = False, chunk_tokens: int = 0,
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) at `temperature` for the last T columns of the micro-batch.

    Shapes: input_ids [B, S], response_ids [B, T] -> logprobs [B, T] (float32), entropy [B, T]
    (float32, no gradient) or None. The logits at position s predict token s+1, so the last T+1
    positions, less the last, give the T response tokens. `chunk_tokens` > 0 takes the chunked
    path for models that allow it (`plain_head`); 0 materialises the [B, T, V] logits.
    `share_prompts` runs each distinct prompt once where that applies (`prompt_groups`; the module
    docstring says where).
    Example: B=2, T=3, chunk_tokens=4 -> the 6 positions go through the head as chunks of 4 and 2.
    """
    device = next(model.parameters()).device
    ids = mb.input_ids.to(device)
    attn = mb.attention_mask.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    targets = mb.response_ids.to(device)
    t = targets.shape[1]
    head = plain_head(model) if chunk_tokens > 0 or share_prompts else None
    if (share_prompts and head is not None and can_share(model, ids.shape[1])
            and (groups := prompt_groups(ids, attn, t)) is not None):
        return _shared_prompt_logprobs(model, head, ids, attn, positions, targets, groups, temperature,
                                       with_entropy, chunk_tokens)
    if chunk_tokens <= 0:  # the head was looked up for sharing only
        head = None

    def forward() -> torch.Tensor:
        out = model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=t + 1,
                    use_cache=False)
        return out.logits

    if head is None:
        return _logprobs_from_logits(forward()[:, :-1, :], targets, temperature, with_entropy)
    entropy_out: list[torch.Tensor | None] = []

    def logprobs_head(original: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        logp, entropy = chunked_head_logprobs(original, hidden[:, :-1, :], targets, temperature, chunk_tokens,
                                              with_entropy)
        entropy_out.append(entropy)
        return logp

    with _forward_replaced(head, logprobs_head):
        logp = forward()
    return logp, entropy_out[0]


def _logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B, T, V] (any float dtype), targets [B, T] -> log-probs [B, T] float32, entropy or None.
    Example: logits [[[0, 0]]], target 1, temperature 1 -> [[log 0.5]] = [[-0.693]]."""
    logits = logits.float() / temperature
    # log p = logit - logsumexp: unlike log_softmax this keeps no second [B, T, V] tensor for backward
    lse = torch.logsumexp(logits, dim=-1)  # [B, T]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = token_entropy(logits.detach(), lse.detach()) if with_entropy else None
    return logp, entropy


def prompt_groups(ids: torch.Tensor, attn: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows that hold each distinct prompt once, and each row's prompt; None when nothing repeats.

    ids, attn [B, S], the last `t` columns the responses. Returns (first [U] long: the first row
    with each distinct prompt, inverse [B] long: the index into `first` of every row's prompt), or
    None when all B prompts differ or there is nothing to share (t < 2: the responses would need no
    forward of their own).
    Example: prompts (columns before the last t) a, b, a, a -> first [0, 1], inverse [0, 1, 0, 0].
    """
    p = ids.shape[1] - t
    if t < 2 or p < 1:
        return None
    key = torch.cat([ids[:, :p], attn[:, :p]], dim=1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if uniq.shape[0] == key.shape[0]:
        return None
    rows = torch.arange(key.shape[0], device=ids.device)
    first = torch.full((uniq.shape[0],), key.shape[0], dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    order = torch.argsort(first)  # keep the prompts in the order their first rows come
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=ids.device)
    return first[order], rank[inverse]


def can_share(model: torch.nn.Module, width: int) -> bool:
    """Whether the responses can run on a KV cache of the prompts: the cache is kept (transformers turns
    it off under gradient checkpointing in training) and holds every position (a sliding-window
    attention narrower than the `width` of prompt + response would crop it).
    Example: a Mistral with sliding_window 4096 -> True at width 1000, False at 5000."""
    inner = extract_model_from_parallel(model)
    if inner.training and getattr(inner, "is_gradient_checkpointing", False):
        return False
    config = getattr(inner, "config", None)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return not window or width <= window


def _shared_prompt_logprobs(model: torch.nn.Module, head: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor,
                            positions: torch.Tensor, targets: torch.Tensor,
                            groups: tuple[torch.Tensor, torch.Tensor], temperature: float, with_entropy: bool,
                            chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`response_logprobs` with each distinct prompt run once (see the module docstring).

    Two forwards: the U distinct prompts [U, P] (the head returns their last hidden state [U, 1, H]
    and the KV cache is kept), then the B responses less their last token [B, T-1] on top of the
    cache indexed out to the rows. In the second forward the head gets the hidden states [B, T, H]
    of the last prompt position and the responses and gives logits (or log-probs, chunked), so it
    still runs inside the model's forward (autocast, wrappers). Shapes as in `response_logprobs`.
    """
    first, inverse = groups
    p, t = ids.shape[1] - targets.shape[1], targets.shape[1]
    last_prompt: list[torch.Tensor] = []
    entropy_out: list[torch.Tensor | None] = []

    def keep_hidden(original: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        last_prompt.append(hidden)
        return hidden

    with _forward_replaced(head, keep_hidden):
        out = model(input_ids=ids[first, :p], attention_mask=attn[first, :p], position_ids=positions[first, :p],
                    logits_to_keep=1, use_cache=True)
    cache = out.past_key_values
    cache.batch_select_indices(inverse)  # [U, ...] -> [B, ...]: indexing, so gradients flow back to the prompts

    def responses_head(original: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([last_prompt[0][inverse].to(hidden.dtype), hidden], dim=1)  # [B, T, H]
        if chunk_tokens <= 0:
            return original(hidden)
        logp, entropy = chunked_head_logprobs(original, hidden, targets, temperature, chunk_tokens, with_entropy)
        entropy_out.append(entropy)
        return logp

    with _forward_replaced(head, responses_head):
        out = model(input_ids=ids[:, p : p + t - 1], attention_mask=attn[:, : p + t - 1],
                    position_ids=positions[:, p : p + t - 1], past_key_values=cache, use_cache=True,
                    logits_to_keep=0)
    if chunk_tokens <= 0:
        return _logprobs_from_logits(out.logits, targets, temperature, with_entropy)
    return out.logits, entropy_out[0]


def plain_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head of `model` when its logits are head(final hidden state), else None.

    `model` may be wrapped (DDP, a DeepSpeed engine, torch.compile; FSDP2 keeps the HF class) and
    the HF model inside may itself be wrapped (a peft model forwards these look-ups to it).
    Example: a Qwen2ForCausalLM -> its lm_head Linear; a Gemma2ForCausalLM -> None.
    """
    inner = extract_model_from_parallel(model)
    family = getattr(getattr(inner, "config", None), "model_type", None)
    return inner.get_output_embeddings() if family in PLAIN_HEAD_FAMILIES else None


@contextmanager
def _forward_replaced(module: torch.nn.Module, replacement: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Within the block, calling `module` runs replacement(original_forward, *args); its hooks (FSDP2,
    DeepSpeed) still run around the call."""
    own = module.__dict__.get("forward")  # a forward set on the instance before (e.g. by a wrapper)
    original = module.forward
    module.forward = lambda *args, **kwargs: replacement(original, *args, **kwargs)
    try:
        yield
    finally:
        if own is None:
            del module.forward  # the class's forward shows through again
        else:
            module.forward = own


def chunked_head_logprobs(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor,
                          temperature: float, chunk_tokens: int, with_entropy: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(h) / temperature)[y] for every position, `chunk_tokens` positions at a time.

    Shapes: hidden [B, T, H], targets [B, T] long -> logprobs [B, T] float32, entropy [B, T] (no
    gradient) or None. With gradients on, each chunk is checkpointed: its logits are dropped after
    the forward and recomputed in the backward, so at most chunk_tokens x V logits live at once.
    Example: head = identity on H = V = 2, hidden [[[0, 0], [2, 0]]], targets [[1, 0]], temperature 1
    -> [[log 0.5, 2 - log(e^2 + 1)]] = [[-0.693, -0.127]].
    """
    rows = hidden.reshape(-1, hidden.shape[-1])  # [B*T, H]
    flat_targets = targets.reshape(-1)
    recompute = torch.is_grad_enabled()

    def one_chunk(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = head(h).float()  # [n, V]
        if temperature != 1.0:  # x / 1.0 == x: skip the copy
            logits = logits / temperature
        lse = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - lse
        # after logp: a checkpoint's recomputation stops once it has what the backward needs
        entropy = token_entropy(logits.detach(), lse.detach()) if with_entropy else None
        return logp, entropy

    logps, entropies = [], []
    for s in range(0, rows.shape[0], chunk_tokens):
        h, y = rows[s : s + chunk_tokens], flat_targets[s : s + chunk_tokens]
        logp, entropy = checkpoint(one_chunk, h, y, use_reentrant=False) if recompute else one_chunk(h, y)
        logps.append(logp)
        entropies.append(entropy)
    logp = torch.cat(logps).view_as(targets)
    return logp, torch.cat(entropies).view_as(targets) if with_entropy else None


@torch.no_grad()
def token_entropy(logits: torch.Tensor, lse: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """H = logsumexp(l) - sum_v softmax(l)_v * l_v per position, [B, T, V] -> [B, T].

    Computed over chunks of positions so the softmax temporary stays chunk_rows x V (a 150k
    vocabulary at 4k response tokens would otherwise need a second 2.4 GB tensor).
    Example: logits [0, 0] -> H = log 2 = 0.693.
    """
    flat, flat_lse = logits.reshape(-1, logits.shape[-1]), lse.reshape(-1)
    out = torch.empty_like(flat_lse)
    for s in range(0, flat.shape[0], chunk_rows):
        rows = flat[s : s + chunk_rows]
        probs = torch.exp(rows - flat_lse[s : s + chunk_rows, None])
        out[s : s + chunk_rows] = flat_lse[s : s + chunk_rows] - (probs * rows).sum(-1)
    return out.view_as(lse)
