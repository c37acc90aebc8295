"""The fused sums on the JAX backend: XLA FFI handlers of the kernels in a ``jax.custom_vjp``.

The handlers (csrc/jax, ``_tfversky_jax.so``) are registered with XLA once, for the CPU and,
in CUDA builds, the GPU, and called with ``jax.ffi.ffi_call``: the forward writes the
(batch, classes) sums, the backward (the custom VJP) is the fused gradient kernel, given
dL/dTP, dL/dFP, dL/dFN by JAX's autodiff of ``losses.loss_from_sums``. Both work eagerly and
under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (the mapped axes are folded into the batch:
``vmap_method="broadcast_all"``), and so in Keras ``fit`` on the JAX backend.

Errors: shapes and dtypes are checked by the handlers with the TensorFlow op's messages; an
out-of-range label fails the CPU call with the op's message even inside ``jax.jit`` (XLA's
FFI carries errors). On the GPU a kernel cannot raise: that sample's sums are NaN.
Reached through ``tfversky.fused``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tfversky import _loader

SUMS_TARGET = "tfversky_fused_tversky_sums"
GRAD_TARGET = "tfversky_fused_tversky_sums_grad"
# The exported handler symbols (csrc/jax) per XLA platform name.
_HANDLERS = {"cpu": ("TfverskySumsCpu", "TfverskySumsGradCpu"),
             "CUDA": ("TfverskySumsCuda", "TfverskySumsGradCuda")}


_info: dict = {}  # the loaded binding's build info


def load() -> dict:
    """Loads the binding and registers its handlers with XLA, once; its build info.

    Raises:
        FusedOpUnavailableError: the binding cannot be loaded (every time: _loader caches
            the failure).
    """
    if not _info:
        library, info = _loader.load_jax()
        platforms = ["cpu"] + (["CUDA"] if info.get("cuda") else [])
        for platform in platforms:
            for target, symbol in zip((SUMS_TARGET, GRAD_TARGET), _HANDLERS[platform]):
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                            platform=platform)
        _info.update(info)
    return _info


def unsupported(y_pred) -> str | None:
    """Why the loaded binding cannot run y_pred here, or None: a GPU without CUDA handlers."""
    try:
        platforms = {d.platform for d in y_pred.devices()}
    except (AttributeError, jax.errors.ConcretizationTypeError):  # a tracer: placed later
        platforms = {jax.default_backend()}
    if "gpu" in platforms and not _info.get("cuda"):
        return (f"the JAX binding {_info.get('path')} was built without CUDA and y_pred is on "
                f"the GPU. Rebuild it with nvcc on PATH: CMAKE_ARGS=-DTFVERSKY_CUDA=ON "
                f"{_loader.REBUILD_COMMAND}")
    return None


class _Attrs(NamedTuple):
    """The handlers' attributes (hashable: a static argument of the custom VJP)."""

    activation: int  # csrc Activation: 0 probabilities, 1 softmax, 2 sigmoid of logits
    has_ignore_index: bool
    ignore_index: int
    spatial_rank: int

    def as_ffi(self) -> dict:
        return dict(activation=np.int32(self.activation), has_ignore_index=self.has_ignore_index,
                    ignore_index=np.int64(self.ignore_index),
                    spatial_rank=np.int64(self.spatial_rank))


def _sum_dtype(dtype):
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _call_sums(y_pred, labels, attrs: _Attrs):
    sums = jax.ShapeDtypeStruct(y_pred.shape[:1] + y_pred.shape[-1:], _sum_dtype(y_pred.dtype))
    call = jax.ffi.ffi_call(SUMS_TARGET, (sums, sums, sums), vmap_method="broadcast_all")
    return tuple(call(y_pred, labels, **attrs.as_ffi()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_sums(y_pred, labels, attrs: _Attrs):
    return _call_sums(y_pred, labels, attrs)


def _fused_sums_forward(y_pred, labels, attrs: _Attrs):
    return _call_sums(y_pred, labels, attrs), (y_pred, labels)


def _fused_sums_backward(attrs: _Attrs, residuals, upstream):
    """dL/dy_pred by the fused gradient kernel; the labels get none."""
    y_pred, labels = residuals
    upstream = [u.astype(_sum_dtype(y_pred.dtype)) for u in upstream]
    call = jax.ffi.ffi_call(GRAD_TARGET, jax.ShapeDtypeStruct(y_pred.shape, y_pred.dtype),
                            vmap_method="broadcast_all")
    return call(y_pred, labels, *upstream, **attrs.as_ffi()), None


_fused_sums.defvjp(_fused_sums_forward, _fused_sums_backward)

_ACTIVATION_CODES = {"softmax": 1, "sigmoid": 2}


def confusion_sums(labels, y_pred, *, sparse, from_logits, activation, ignore_index):
    """``tfversky.fused.confusion_sums`` on JAX: jax.Array sums, differentiable by JAX."""
    y_pred = jnp.asarray(y_pred)
    labels = jnp.asarray(labels)
    if not sparse:
        labels = labels.astype(_sum_dtype(y_pred.dtype))
    elif labels.dtype not in (jnp.uint8, jnp.int32, jnp.int64):
        labels = labels.astype(jnp.int32)  # class ids < 64: any integer type holds them
    attrs = _Attrs(activation=_ACTIVATION_CODES[activation] if from_logits else 0,
                   has_ignore_index=ignore_index is not None,
                   ignore_index=0 if ignore_index is None else int(ignore_index),
                   spatial_rank=y_pred.ndim - 2)
    return _fused_sums(y_pred, labels, attrs)
