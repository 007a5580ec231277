"""The one error type of `rlvr.data`: a dataset that cannot become prompts."""

from rlvr.errors import RlvrError


class DataError(RlvrError, ValueError):
    """A source or row that cannot be read or templated; the message names the source and the row.

    Example: ``data/train.jsonl row 17: missing field 'question' (fields: q, a)``. The CLI prints
    it as one `error:` line and exits 2, like a recipe problem: the input is wrong, nothing ran.
    """

    exit_code = 2
