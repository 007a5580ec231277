"""build_prompts: templating, chat rendering, tokenisation, and bad rows named or counted."""

from __future__ import annotations

import pytest

from rlvr.data import BAD_ROW_REASONS, DataError, build_prompts, load_rows
from rlvr.models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_raw_text_gets_the_bos_prefix_and_row_keeps_the_gold_answer(tok):
    rows = [{"prompt": "12+34=", "answer": 6}, {"prompt": "7>", "answer": "8"}]
    prompts, stats = build_prompts(rows, "toy", tok, chat_template=False)
    assert [p.uid for p in prompts] == ["toy#0", "toy#1"]
    assert prompts[0].text == "12+34="
    assert prompts[0].token_ids == [tok.bos_token_id] + tok("12+34=", add_special_tokens=False).input_ids
    assert [p.answer for p in prompts] == ["6", "8"]
    assert prompts[0].row == {"prompt": "12+34=", "answer": "6"}
    assert rows[0]["answer"] == 6  # the caller's rows are not modified
    assert stats == {"rows": 2, "skipped": 0, **{r: 0 for r in BAD_ROW_REASONS}}


def test_template_formats_the_row_and_answer_field_is_copied(tok):
    rows = [{"question": "2+2", "solution": 4, "id": 9}]
    (p,), _ = build_prompts(
        rows,
        "toy",
        tok,
        prompt_template="Question: {question}\nAnswer:",
        answer_field="solution",
        chat_template=False,
    )
    assert p.text == "Question: 2+2\nAnswer:"
    assert tok.decode(p.token_ids, skip_special_tokens=True) == p.text
    assert p.answer == "4" and p.row == {"question": "2+2", "solution": 4, "id": 9, "answer": "4"}


def test_no_answer_field(tok):
    (p,), _ = build_prompts([{"prompt": "hi"}], "toy", tok, answer_field=None, chat_template=False)
    assert p.answer is None and p.row == {"prompt": "hi"}


def test_system_prompt_and_chat_template_give_the_chatml_string(tok):
    (p,), _ = build_prompts([{"prompt": "12+34=", "answer": "6"}], "toy", tok, system_prompt="Be brief.")
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n12+34=<|im_end|>\n<|im_start|>assistant\n"
    )
    assert p.text == expected
    # tokenised once, without a second BOS in front of the template's own tokens
    assert p.token_ids == tok(expected, add_special_tokens=False).input_ids
    assert p.token_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert p.token_ids.count(tok.bos_token_id) == 0


def test_chat_template_without_system_prompt(tok):
    (p,), _ = build_prompts([{"prompt": "3>", "answer": "4"}], "toy", tok)
    assert p.text == "<|im_start|>user\n3><|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_chat_template_uses_the_raw_text(tok):
    plain = build_tiny_tokenizer()
    plain.chat_template = None
    (p,), _ = build_prompts([{"prompt": "3>", "answer": "4"}], "toy", plain)
    assert p.text == "3>" and p.token_ids == plain("3>").input_ids
    with pytest.raises(DataError, match="system_prompt needs a chat template, but the tokenizer has none"):
        build_prompts([{"prompt": "3>", "answer": "4"}], "toy", plain, system_prompt="x")


def test_option_conflicts_fail_before_any_row(tok):
    with pytest.raises(DataError, match="system_prompt needs a chat template, but chat_template is off"):
        build_prompts([], "toy", tok, system_prompt="x", chat_template=False)
    with pytest.raises(DataError, match="set prompt_field or prompt_template"):
        build_prompts([], "toy", tok, prompt_field=None)
    with pytest.raises(DataError, match="on_bad_row must be"):
        build_prompts([], "toy", tok, on_bad_row="ignore")


BAD_ROWS = [
    {"q": "fine", "a": "1"},  # 0 ok
    {"q": "no answer"},  # 1 missing_answer
    {"x": "no prompt", "a": "1"},  # 2 missing_field
    {"q": 42, "a": "1"},  # 3 not_a_string
    {"q": "   ", "a": "1"},  # 4 empty_prompt
    {"q": "x" * 40, "a": "1"},  # 5 too_long (41 tokens with the BOS)
    {"q": "fine too", "a": None},  # 6 missing_answer
    {"q": "ok", "a": 0},  # 7 ok: a falsy answer is still an answer
]


def test_bad_row_error_names_source_row_and_problem(tok):
    with pytest.raises(DataError) as info:
        build_prompts(
            BAD_ROWS,
            "data/train.jsonl",
            tok,
            prompt_field="q",
            answer_field="a",
            chat_template=False,
            max_prompt_tokens=20,
        )
    assert str(info.value) == (
        "data/train.jsonl row 1: answer field 'a' is missing (fields: q) "
        "(and 5 more bad rows; on_bad_row='skip' drops them)"
    )


@pytest.mark.parametrize(
    "row, kwargs, message",
    [
        (
            {"q": "x"},
            {"prompt_template": "Question: {question}"},
            "missing field 'question' (fields: q, answer)",
        ),
        (
            {"q": "x", "n": 1.5},
            {"prompt_template": "{q} {n:d}"},
            "prompt_template failed (ValueError: Unknown format code 'd' for object of type 'float')",
        ),
        ({"q": 3}, {"prompt_field": "q"}, "field 'q' is a int, expected a string"),
        ({"q": ""}, {"prompt_field": "q"}, "empty prompt"),
        (
            {"q": "x", "answer": None},
            {"prompt_field": "q"},
            "answer field 'answer' is None (fields: q, answer)",
        ),
        (
            {"q": "abcdef"},
            {"prompt_field": "q", "max_prompt_tokens": 5},
            "prompt is 7 tokens, more than max_prompt_tokens=5",
        ),
    ],
)
def test_each_problem_has_its_message(tok, row, kwargs, message):
    rows = [
        {"q": "good", "question": "good", "n": 2, "answer": "1"},
        {**row, "answer": row.get("answer", "1")},
    ]
    with pytest.raises(DataError) as info:
        build_prompts(rows, "src.jsonl", tok, chat_template=False, **kwargs)
    assert str(info.value) == f"src.jsonl row 1: {message}"


def test_skip_mode_counts_each_reason_and_keeps_row_indices(tok):
    prompts, stats = build_prompts(
        BAD_ROWS,
        "src",
        tok,
        prompt_field="q",
        answer_field="a",
        chat_template=False,
        max_prompt_tokens=20,
        on_bad_row="skip",
    )
    assert [p.uid for p in prompts] == ["src#0", "src#7"]
    assert prompts[1].answer == "0"
    assert stats == {
        "rows": 8,
        "skipped": 6,
        "missing_field": 1,
        "template_error": 0,
        "not_a_string": 1,
        "empty_prompt": 1,
        "missing_answer": 2,
        "too_long": 1,
    }


def test_ten_thousand_prompts_in_one_batch(tok):
    source, rows = load_rows("synthetic:mod_sum", synthetic_args={"num_rows": 10_000})
    prompts, _ = build_prompts(rows, source, tok, system_prompt="Answer with one digit.")
    assert len(prompts) == 10_000 and prompts[-1].uid == "synthetic:mod_sum:train#9999"
    last = prompts[-1]
    assert last.token_ids == tok(last.text, add_special_tokens=False).input_ids


# a chat template that shows tools the way Qwen's does: a <tools> block of JSON schemas before the turns
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_tool_schemas_reach_the_chat_template():
    tok = build_tiny_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    schema = {"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {}}}
    (with_tools,), _ = build_prompts([{"prompt": "1+2=", "answer": "3"}], "toy", tok, tools=[schema])
    (plain,), _ = build_prompts([{"prompt": "1+2=", "answer": "3"}], "toy", tok)
    block = '<|im_start|>system\n<tools>{"type": "function", "function": {"name": "add", "description": "Add.", ' \
            '"parameters": {}}}</tools><|im_end|>\n'  # (transformers' Jinja trims a newline after a block tag)
    assert with_tools.text == block + plain.text
    assert with_tools.token_ids == tok(with_tools.text, add_special_tokens=False).input_ids
    assert plain.text == "<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n"


def test_a_recipes_env_tools_are_in_its_prompts_unless_turned_off():
    from pathlib import Path

    from rlvr.config import load_config
    from rlvr.run import build

    recipe = Path(__file__).resolve().parents[3] / "recipes" / "agents" / "calculator.yaml"
    tok = build_tiny_tokenizer()
    tok.chat_template = TOOLS_TEMPLATE
    texts = {}
    for shown in (True, False):
        cfg = load_config(recipe, ["data.train.args.num_rows=2", f"data.tool_schemas={str(shown).lower()}"])
        prompts, _ = build.load_prompt_set(cfg, cfg.data.train, tok, recipe.parent, build.make_env(cfg, recipe.parent))
        texts[shown] = prompts[0].text
    assert texts[True].startswith('<|im_start|>system\n<tools>{"type": "function", "function": {"name": "calculator"')
    assert texts[True].endswith(texts[False]) and "<tools>" not in texts[False]
