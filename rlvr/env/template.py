"""The text an environment inserts between two model turns, from the tokenizer's own chat template.

An episode's context grows as ids: the prompt, the model's tokens as generated, then the
environment's messages rendered the way the model's chat template renders them (for Qwen a tool
result becomes `<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n`), then the
template's prompt for the next assistant turn. Only the inserted text is tokenised; the model's
tokens are never decoded and encoded again, so nothing drifts across turns.
"""

from __future__ import annotations

from typing import Any

_USER = {"role": "user", "content": "."}
_MARK = "\u2063MARK\u2063"  # a content no template changes, to find where an assistant turn's content ends


class TurnTemplate:
    """`between(messages, closed)`: the text after a model turn, before the next one.

    Example (ChatML, the tiny models'): a turn that stopped at "</tool_call>" and one tool message
    "42" -> "<|im_end|>\\n<|im_start|>tool\\n42<|im_end|>\\n<|im_start|>assistant\\n".
    Without a chat template: "\\n" + each message's content + "\\n".
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.close = ""  # what ends an assistant turn, e.g. "<|im_end|>\n"
        if self.has_template:
            done = self._render([_USER, {"role": "assistant", "content": _MARK}], generation_prompt=False)
            self.close = done[done.index(_MARK) + len(_MARK):]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def between(self, messages: list[dict[str, str]], closed: bool = False) -> str:
        """The inserted text; `closed`: the model's turn already ended with the template's
        end-of-turn (its EOS token), so it is not written again."""
        if not self.has_template:
            return "".join(f"\n{m['content']}" for m in messages) + "\n"
        base = [_USER, {"role": "assistant", "content": _MARK}]
        before = self._render(base, generation_prompt=False)
        after = self._render(base + messages, generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("the chat template renders earlier messages differently once later ones are added; "
                             "an environment needs a template that only appends (most do)")
        return ("" if closed else self.close) + after[len(before):]

    def closing_ids(self, tokenizer: Any, eos_ids: Any) -> list[int]:
        """The end-of-generation ids that also close an assistant turn in the template (ChatML:
        <|im_end|>), in `eos_ids` order; [] without a template."""
        return [t for t in eos_ids if self.close and self.close.startswith(tokenizer.decode([t]))]
