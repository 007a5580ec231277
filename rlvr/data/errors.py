"""The one error type of `rlvr.data`: a dataset that cannot become prompts."""


class DataError(ValueError):
    """A source or row that cannot be read or templated; the message names the source and the row.

    Example: ``data/train.jsonl row 17: missing field 'question' (fields: q, a)``.
    """
