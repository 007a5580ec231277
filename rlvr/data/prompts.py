"""Turn dataset rows into `Prompt` records: template, check and tokenise every row once, at load time.

Doing it once means the training loop never re-tokenises, and a bad row fails before any model
loads, with a message that points at it:

    data/train.jsonl row 17: missing field 'question' (fields: q, a)
"""

from __future__ import annotations

from typing import Any, Literal

from rlvr.data.errors import DataError
from rlvr.types import Prompt

# Why a row can be rejected; build_prompts counts each (zero included, so metric keys are stable).
BAD_ROW_REASONS = (
    "missing_field",
    "template_error",
    "not_a_string",
    "empty_prompt",
    "missing_answer",
    "too_long",
)


class _BadRow(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def build_prompts(
    rows: list[dict[str, Any]],
    source: str,
    tokenizer: Any,
    *,
    prompt_field: str | None = "prompt",
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    chat_template: bool = True,
    answer_field: str | None = "answer",
    max_prompt_tokens: int | None = None,
    on_bad_row: Literal["error", "skip"] = "error",
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[Prompt], dict[str, int]]:
    """Prompts of `rows`, uid f"{source}#{row index}", plus counts {"rows", "skipped", <reason>...}.

    The prompt text is `prompt_template.format(**row)` when a template is given (it wins over
    `prompt_field`), else `row[prompt_field]`. With `chat_template` and a tokenizer that has one,
    the text becomes a user turn (after an optional system turn) rendered with the generation
    prompt, and is tokenised without adding special tokens again (the template already holds
    them). Otherwise the raw text is tokenised the tokenizer's usual way (a BOS if it adds one).
    `tools` (JSON schemas of an environment's tools) go to the chat template as `tools=`.

    A bad row (see BAD_ROW_REASONS) raises DataError naming the first one and how many there are;
    with on_bad_row="skip" bad rows are dropped and counted.

        >>> prompts, stats = build_prompts([{"q": "2+2=", "a": 4}], "toy", tok,
        ...     prompt_template="Q: {q}\\nA:", answer_field="a", chat_template=False)
        >>> prompts[0].uid, prompts[0].text, prompts[0].answer, prompts[0].row
        ('toy#0', 'Q: 2+2=\\nA:', '4', {'q': '2+2=', 'a': 4, 'answer': '4'})
        >>> stats
        {'rows': 1, 'skipped': 0, 'missing_field': 0, ..., 'too_long': 0}
    """
    use_chat = _check_options(
        tokenizer, prompt_field, prompt_template, system_prompt, chat_template, on_bad_row
    )
    kept, bad = _templated(rows, prompt_field, prompt_template, answer_field)
    texts = _render([text for _, text, _ in kept], tokenizer, system_prompt, use_chat, tools)
    token_ids = tokenizer(texts, add_special_tokens=not use_chat)["input_ids"] if texts else []
    prompts = []
    for (i, _, answer), text, ids in zip(kept, texts, token_ids):
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            message = f"prompt is {len(ids)} tokens, more than max_prompt_tokens={max_prompt_tokens}"
            bad.append((i, "too_long", message))
            continue
        row = rows[i] if answer_field is None else {**rows[i], "answer": answer}
        prompts.append(Prompt(uid=f"{source}#{i}", text=text, token_ids=list(ids), answer=answer, row=row))

    if bad and on_bad_row == "error":
        raise DataError(_first_problem(source, bad))
    stats = {"rows": len(rows), "skipped": len(bad)}
    stats.update({reason: sum(r == reason for _, r, _ in bad) for reason in BAD_ROW_REASONS})
    return prompts, stats


def check_rows(
    rows: list[dict[str, Any]],
    source: str,
    *,
    prompt_field: str | None = "prompt",
    prompt_template: str | None = None,
    answer_field: str | None = "answer",
    on_bad_row: Literal["error", "skip"] = "error",
) -> None:
    """The row checks of `build_prompts` that need no tokenizer (fields, template, answer), for
    validating a recipe before any model or tokenizer exists; raises the same DataError."""
    if prompt_field is None and prompt_template is None:
        raise DataError("set prompt_field or prompt_template: there is no way to find the prompt text")
    _, bad = _templated(rows, prompt_field, prompt_template, answer_field)
    if bad and on_bad_row == "error":
        raise DataError(_first_problem(source, bad))


def _templated(
    rows: list[dict[str, Any]],
    prompt_field: str | None,
    prompt_template: str | None,
    answer_field: str | None,
) -> tuple[list[tuple[int, str, str | None]], list[tuple[int, str, str]]]:
    """(kept: row index, prompt text, answer), (bad: row index, reason, message) of every row."""
    bad: list[tuple[int, str, str]] = []
    kept: list[tuple[int, str, str | None]] = []
    for i, row in enumerate(rows):
        try:
            kept.append((i, _prompt_text(row, prompt_field, prompt_template), _answer(row, answer_field)))
        except _BadRow as e:
            bad.append((i, e.reason, str(e)))
    return kept, bad


def _check_options(
    tokenizer: Any,
    prompt_field: str | None,
    prompt_template: str | None,
    system_prompt: str | None,
    chat_template: bool,
    on_bad_row: str,
) -> bool:
    """Reject option combinations that would silently drop something; say whether to use the chat template."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if prompt_field is None and prompt_template is None:
        raise DataError("set prompt_field or prompt_template: there is no way to find the prompt text")
    use_chat = chat_template and getattr(tokenizer, "chat_template", None) is not None
    if system_prompt is not None and not use_chat:
        why = "chat_template is off" if not chat_template else "the tokenizer has none"
        raise DataError(f"system_prompt needs a chat template, but {why}")
    return use_chat


def _prompt_text(row: dict[str, Any], prompt_field: str | None, prompt_template: str | None) -> str:
    if prompt_template is not None:
        try:
            text = prompt_template.format(**row)
        except KeyError as e:
            raise _BadRow("missing_field", _missing(e.args[0], row)) from None
        except (IndexError, ValueError, AttributeError, TypeError) as e:
            raise _BadRow("template_error", f"prompt_template failed ({type(e).__name__}: {e})") from None
    else:
        assert prompt_field is not None
        if prompt_field not in row:
            raise _BadRow("missing_field", _missing(prompt_field, row))
        text = row[prompt_field]
        if not isinstance(text, str):
            raise _BadRow(
                "not_a_string", f"field '{prompt_field}' is a {type(text).__name__}, expected a string"
            )
    if not text.strip():
        raise _BadRow("empty_prompt", "empty prompt")
    return text


def _answer(row: dict[str, Any], answer_field: str | None) -> str | None:
    if answer_field is None:
        return None
    if row.get(answer_field) is None:
        what = "is None" if answer_field in row else "is missing"
        raise _BadRow("missing_answer", f"answer field '{answer_field}' {what} (fields: {', '.join(row)})")
    return str(row[answer_field])


def _missing(field: str, row: dict[str, Any]) -> str:
    return f"missing field '{field}' (fields: {', '.join(row)})"


def _first_problem(source: str, bad: list[tuple[int, str, str]]) -> str:
    """The lowest-index problem, and how many more there are (fix one, see the next)."""
    i, _, message = min(bad)
    rest = len(bad) - 1
    more = (
        f" (and {rest} more bad row{'s' if rest > 1 else ''}; on_bad_row='skip' drops them)" if rest else ""
    )
    return f"{source} row {i}: {message}{more}"


def _render(texts: list[str], tokenizer: Any, system_prompt: str | None, use_chat: bool,
            tools: list[dict[str, Any]] | None = None) -> list[str]:
    """The exact strings the policy is conditioned on."""
    if not use_chat or not texts:
        return texts
    head = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    conversations = [head + [{"role": "user", "content": text}] for text in texts]
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False, **extra)
