"""The tiny model builder: a real transformers model and tokenizer, built locally and atomically."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.models import build_tiny_model, build_tiny_tokenizer, ensure_tiny_model
from rlvr.models.tiny import CHARACTERS


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def test_loads_with_auto_classes_and_matches_the_defaults(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    # embeddings 99 x 128 (tied with the head)
    # + 2 layers x (attention 49,408 + MLP 98,304 + norms 256) + final norm 128
    assert n_params == 99 * 128 + 2 * (49_408 + 98_304 + 256) + 128 == 308_736
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(tok) == model.config.vocab_size == 3 + len(CHARACTERS) == 99
    assert sorted(os.listdir(tiny_dir)) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_special_token_ids_agree_between_tokenizer_model_and_generation_config(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == eos
    cfg = model.config
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == (eos, eos, eos)
    gen = model.generation_config
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert (gen.eos_token_id, gen.pad_token_id, gen.bos_token_id) == ([eos, im_end], eos, eos)


def test_tokenizer_is_one_token_per_character_and_round_trips(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok("12+34=").input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + 6  # the BOS-like prefix, then one per character
    assert tok.decode(ids, skip_special_tokens=True) == "12+34="
    text = CHARACTERS + "  a , b .\n\n{x} 'q' \"r\" ~"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "1>"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\n1><|im_end|>\n<|im_start|>assistant\n"
    chat_ids = tok(chat, add_special_tokens=False).input_ids
    assert len(chat_ids) == 1 + len("user\n1>") + 1 + 1 + 1 + len("assistant\n")
    assert tok.decode(chat_ids, skip_special_tokens=True) == "user\n1>\nassistant\n"


def test_auto_tokenizer_gives_the_built_tokenizer_for_both_archs(tiny_dir, tmp_path):
    # transformers 5 loads a tokenizer in a qwen2 folder as Qwen2Tokenizer and rebuilds its pipeline
    ref = build_tiny_tokenizer()
    llama_dir = build_tiny_model(
        tmp_path / "llama", arch="llama", hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16
    )
    text = CHARACTERS + "  x , y\n\n{z}"
    for folder in (tiny_dir, llama_dir):
        tok = AutoTokenizer.from_pretrained(folder)
        assert (
            tok(text).input_ids
            == ref(text).input_ids
            == [0]
            + list(range(3, 3 + len(CHARACTERS)))
            + ref("  x , y\n\n{z}", add_special_tokens=False).input_ids
        )
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    # characters outside the vocabulary (non-ASCII, tab, carriage return) are dropped
    assert ref.decode(ref("\u00e9\tx\r\n").input_ids, skip_special_tokens=True) == "x\n"


def test_greedy_generate_runs_and_is_seeded(tiny_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    inputs = tok(["12+34=", "7>"], return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs.input_ids.shape[1] + 3)

    same = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "again"))
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "other", seed=1))
    weight = model.model.embed_tokens.weight
    assert torch.equal(same.model.embed_tokens.weight, weight)
    assert not torch.equal(other.model.embed_tokens.weight, weight)


def test_building_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_llama_and_custom_shapes(tmp_path):
    path = build_tiny_model(
        tmp_path / "llama",
        arch="llama",
        hidden_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=64,
        intermediate_size=96,
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (2 * 64, 64)
    assert model.model.layers[0].mlp.up_proj.weight.shape == (96, 64)
    with pytest.raises(ValueError, match="arch must be one of qwen2, llama"):
        build_tiny_model(tmp_path / "x", arch="gpt2")
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        build_tiny_model(tmp_path / "y", num_heads=4, num_kv_heads=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama"]  # failed builds leave nothing behind


def test_existing_folder_needs_overwrite(tmp_path):
    path = build_tiny_model(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_tiny_model(path)
    build_tiny_model(path, overwrite=True, seed=3)
    assert (path / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary siblings left


def test_a_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(build_tiny_tokenizer()), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_ensure_is_a_no_op_the_second_time(tmp_path):
    path = ensure_tiny_model(tmp_path / "m", hidden_size=64, head_dim=16)
    stamp = {name: os.stat(path / name).st_mtime_ns for name in os.listdir(path)}
    assert ensure_tiny_model(tmp_path / "m", hidden_size=64, head_dim=16) == path
    assert {name: os.stat(path / name).st_mtime_ns for name in os.listdir(path)} == stamp


def test_ensure_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ensure_tiny_model(tmp_path / "m")
    assert os.listdir(tmp_path / "m") == ["notes.txt"]
