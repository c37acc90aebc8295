"""The fused C++/CUDA Tversky op: where the dispatcher in ``losses`` plugs it in.

Not built yet: ``implementation="auto"`` uses the pure TensorFlow sums, and
``implementation="fused"`` says so.
"""


def should_use(implementation, labels, y_pred, *, sparse, options) -> bool:
    if implementation == "fused":
        raise NotImplementedError(
            "implementation='fused' needs the fused Tversky op, which this build does not "
            "have. Use implementation='tf' or 'auto'.")
    return False


def confusion_sums(labels, y_pred, *, sparse, from_logits, activation, ignore_index):
    raise NotImplementedError("the fused Tversky op is not built")
