"""Tiny random causal LMs with a character tokenizer, built locally in about a second.

Why: no hub is needed to run tests, debug a training step or check that RL learns. With the
defaults (Qwen2, hidden 128, 2 layers, 99-symbol vocabulary) the model has about 0.31M parameters
and learns `synthetic:mod_sum` from random weights by RL alone in about a minute on CPU.

    >>> path = ensure_tiny_model("models/tiny-qwen2")          # builds once, then reuses
    >>> AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)

The tokenizer has one token per printable ASCII character (space to "~") plus "\\n", and three
special tokens: <|endoftext|> (eos, pad and bos), <|im_start|>, <|im_end|>. Characters outside
that set are dropped when tokenising.

BOS decision: raw text is tokenised as "<|endoftext|>" + characters. A model trained from random
weights learns faster when every prompt starts with the same token: position 0 is then a fixed
place attention can rest on, instead of whichever digit the prompt starts with (in the measured
minimal GRPO loop, prompts with that prefix learned mod_sum in ~600 steps). Chat-templated text is
tokenised without it (build_prompts passes add_special_tokens=False), because it already starts
with the fixed "<|im_start|>".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<|im_start|>", "<|im_end|>")
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig}


def build_tiny_tokenizer(model_max_length: int = 512, characters: str | None = None) -> PreTrainedTokenizerFast:
    """The character-level ChatML tokenizer of the tiny models (ids: 3 special tokens, "\\n", " ".."~").

    Characters are named in the byte-level alphabet (" " is "Ġ", "\\n" is "Ċ") and the pipeline is
    the one Qwen2Tokenizer builds, because transformers 5 `AutoTokenizer` loads any tokenizer in a
    qwen2 folder as Qwen2Tokenizer: it keeps the vocabulary, merges and post-processor from
    tokenizer.json and rebuilds the rest. With a plain character pipeline that rebuild silently
    dropped every space; with this one it changes nothing.

        >>> tok = build_tiny_tokenizer()
        >>> tok("1+2=").input_ids, tok.decode(tok("1+2=").input_ids, skip_special_tokens=True)
        ([0, 21, 15, 22, 33], '1+2=')
    """
    to_symbol = bytes_to_unicode()  # byte -> its printable stand-in, as byte-level BPE spells it
    # a task alphabet is for raw-text tasks: no chat markers, which would decode to nothing and let
    # a policy pad an answer with them unseen by a text verifier
    specials = SPECIAL_TOKENS if characters is None else (EOS,)
    vocab = {token: i for i, token in enumerate(specials)}
    chars = CHARACTERS if characters is None else "".join(dict.fromkeys(characters))
    bad = [c for c in chars if c not in CHARACTERS]
    if bad:
        raise ValueError(f"characters: {bad!r} are not printable ASCII or newline")
    vocab.update({to_symbol[ord(c)]: len(specials) + i for i, c in enumerate(chars)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A $B:1", special_tokens=[(EOS, vocab[EOS])]
    )
    backend.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        chat_template=CHAT_TEMPLATE if characters is None else None,
        clean_up_tokenization_spaces=False,  # "a , b" must decode to "a , b"
        model_max_length=model_max_length,
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "qwen2",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    characters: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a random-init fp32 model, its tokenizer and generation config to `out_dir`.

    `intermediate_size` defaults to 2 * hidden_size. `characters` restricts the vocabulary to a
    task's alphabet (e.g. "0123456789+="): a policy from random weights then starts with a far
    higher chance of a correct sample (1/13 per token instead of 1/99). The folder appears whole or not at all: the
    build goes to a hidden temporary sibling that is renamed into place. An existing non-empty
    `out_dir` raises FileExistsError unless `overwrite`.

        >>> build_tiny_model("/tmp/tiny", seed=1)
        PosixPath('/tmp/tiny')
    """
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    tokenizer = build_tiny_tokenizer(max_position_embeddings, characters)
    shape = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position_embeddings,
    }
    config = _model_config(arch, tokenizer, shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model folder should not be
        _random_model(config, seed, tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_tiny_model(out_dir: str | Path, **kwargs: Any) -> Path:
    """`out_dir`, built with `build_tiny_model(**kwargs)` unless it already holds a config.json.

    An existing model is returned as it is, even if it was built with other arguments. Safe when
    several processes call it at once (e.g. under torchrun): one build wins, the others reuse it.
    """
    out = Path(out_dir)
    if not (out / "config.json").exists():
        try:
            build_tiny_model(out, **kwargs)
        except FileExistsError:
            if not (out / "config.json").exists():  # someone else's files, not a concurrent build
                raise
    return out


def _model_config(arch: str, tokenizer: PreTrainedTokenizerFast, shape: dict[str, int]) -> Any:
    if arch not in CONFIGS:
        raise ValueError(f"arch must be one of {', '.join(CONFIGS)}, got {arch!r}")
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    if heads % kv_heads:
        raise ValueError(f"num_heads ({heads}) must be a multiple of num_kv_heads ({kv_heads})")
    return CONFIGS[arch](
        vocab_size=len(tokenizer),
        **shape,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _random_model(config: Any, seed: int, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Weights drawn from `seed` without touching the caller's random state (a training process
    that builds its model at start-up keeps its own seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = config.bos_token_id
    # a chat reply ends with <|im_end|>: generation stops there as well as at <|endoftext|>
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chat = im_end is not None and im_end != tokenizer.unk_token_id and "<|im_end|>" in tokenizer.get_vocab()
    model.generation_config.eos_token_id = [config.eos_token_id, im_end] if chat else config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished build to `out`. A rename cannot land on a non-empty folder, so with
    `overwrite` the old folder is first renamed aside, then deleted."""
    if overwrite and out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, out)
    except OSError as e:  # another process finished first, or a file sits there
        raise FileExistsError(f"{out} appeared while building ({e.strerror})") from e
