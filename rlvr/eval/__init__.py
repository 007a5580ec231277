"""Evaluation: greedy accuracy and pass@k on the recipe's eval set, during training (`evaluate`)
and on any saved model folder (`standalone`, behind `rlvr eval`)."""
