"""Prompt datasets: read rows from a file, the hub or a synthetic task, then template and tokenise them.

>>> source, rows = load_rows("synthetic:mod_sum", synthetic_args={"num_rows": 4})
>>> prompts, stats = build_prompts(rows, source, tokenizer, chat_template=False)
>>> prompts[0].uid, prompts[0].text, prompts[0].answer
('synthetic:mod_sum:train#0', '51+67=', '8')
"""

from rlvr.data.errors import DataError
from rlvr.data.prompts import BAD_ROW_REASONS, build_prompts, check_rows
from rlvr.data.sources import load_rows

__all__ = ["BAD_ROW_REASONS", "DataError", "build_prompts", "check_rows", "load_rows"]
