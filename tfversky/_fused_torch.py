"""The fused sums on the PyTorch backend: ``torch.library`` ops of the kernels.

The binding (csrc/torch, ``_tfversky_torch.so``) defines ``torch.ops.tfversky.
fused_tversky_sums`` and ``fused_tversky_sums_grad`` with CPU kernels (and CUDA kernels in
CUDA builds). Here, once, the sums get their autograd formula (the gradient op, given
dL/dTP, dL/dFP, dL/dFN by autograd of ``losses.loss_from_sums``) and both ops fake
implementations (shapes and dtypes only), so that ``torch.compile`` traces the loss without
a graph break. Shapes, dtypes and labels are checked by the ops with the TensorFlow op's
messages (ValueError/TypeError); on the GPU a kernel cannot raise, so an out-of-range label
makes its sample's sums NaN. Reached through ``tfversky.fused``.
"""

from __future__ import annotations

import torch

from tfversky import _loader

_ACTIVATION_CODES = {"softmax": 1, "sigmoid": 2}  # csrc Activation; 0: probabilities
_SUMS = "tfversky::fused_tversky_sums"
_GRAD = "tfversky::fused_tversky_sums_grad"


def _sum_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sums_fake(y_pred, labels, activation, has_ignore_index, ignore_index):
    shape = (y_pred.shape[0], y_pred.shape[-1])
    return tuple(y_pred.new_empty(shape, dtype=_sum_dtype(y_pred.dtype)) for _ in range(3))


def _grad_fake(y_pred, labels, grad_tp, grad_fp, grad_fn, activation, has_ignore_index,
               ignore_index):
    return y_pred.new_empty(y_pred.shape)


def _setup_context(ctx, inputs, output):
    y_pred, labels, *attrs = inputs
    ctx.save_for_backward(y_pred, labels)
    ctx.attrs = attrs


def _backward(ctx, grad_tp, grad_fp, grad_fn):
    """dL/dy_pred by the fused gradient kernel; the labels and attributes get none."""
    y_pred, labels = ctx.saved_tensors
    shape = (y_pred.shape[0], y_pred.shape[-1])
    upstream = [torch.zeros(shape, dtype=_sum_dtype(y_pred.dtype), device=y_pred.device)
                if g is None else g for g in (grad_tp, grad_fp, grad_fn)]
    grad = torch.ops.tfversky.fused_tversky_sums_grad(y_pred, labels, *upstream, *ctx.attrs)
    return grad, None, None, None, None


_info: dict = {}  # the loaded binding's build info


def _register() -> None:
    """Loads the binding and registers the fake implementations and the autograd formula."""
    _info.update(_loader.load_torch())
    torch.library.register_fake(_SUMS)(_sums_fake)
    torch.library.register_fake(_GRAD)(_grad_fake)
    torch.library.register_autograd(_SUMS, _backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _load_error() -> str:
    """Loads and registers the binding once: "" when it is loaded, else why not. Run, not
    traced, by torch.compile (which sees its result as a constant): loading inside a traced
    function would break the graph."""
    if not _info:
        try:
            _register()
        except _loader.FusedOpUnavailableError as error:
            return str(error)
    return ""


def load() -> dict:
    """Loads and registers the binding once; its build info. Raises FusedOpUnavailableError
    (every time: _loader caches the failure)."""
    error = _load_error()
    if error:
        raise _loader.FusedOpUnavailableError(error)
    return _info


def unsupported(y_pred) -> str | None:
    """Why the loaded binding cannot run y_pred's device, or None."""
    device = getattr(y_pred, "device", torch.device("cpu"))
    # "meta": Keras's shape inference (compute_output_spec); the registered fake runs it.
    if device.type in ("cpu", "meta") or (device.type == "cuda" and _info.get("cuda")):
        return None
    return (f"the PyTorch binding {_info.get('path')} has no kernels for y_pred's device "
            f"{device} (CUDA kernels need a CUDA PyTorch and nvcc at build time: "
            f"CMAKE_ARGS=-DTFVERSKY_CUDA=ON {_loader.REBUILD_COMMAND})")


def confusion_sums(labels, y_pred, *, sparse, from_logits, activation, ignore_index):
    """``tfversky.fused.confusion_sums`` on PyTorch: torch.Tensor sums, differentiable."""
    y_pred = torch.as_tensor(y_pred)
    labels = torch.as_tensor(labels, device=y_pred.device)
    if not sparse:
        labels = labels.to(_sum_dtype(y_pred.dtype))
    elif labels.dtype not in (torch.uint8, torch.int32, torch.int64):
        labels = labels.to(torch.int32)  # class ids < 64: any integer type holds them
    return torch.ops.tfversky.fused_tversky_sums(
        y_pred, labels, _ACTIVATION_CODES[activation] if from_logits else 0,
        ignore_index is not None, 0 if ignore_index is None else int(ignore_index))
