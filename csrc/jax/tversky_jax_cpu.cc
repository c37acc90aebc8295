// XLA FFI handlers of the fused Tversky ops for JAX on the CPU ("Host" platform), exported
// as C symbols that tfversky/_fused_jax.py registers with jax.ffi.register_ffi_target. They
// check the buffers (tversky_jax.h) and call the CPU kernels on threads of their own; an
// out-of-range label fails the call with the TensorFlow op's message, also inside jax.jit.
#include "tversky_jax.h"

namespace tfversky {
namespace jax_ffi {
namespace {

ffi::Error SumsCpu(ffi::AnyBuffer y, ffi::AnyBuffer labels, ffi::Result<ffi::AnyBuffer> tp,
                   ffi::Result<ffi::AnyBuffer> fp, ffi::Result<ffi::AnyBuffer> fn,
                   int32_t activation, bool has_ignore_index, int64_t ignore_index,
                   int64_t spatial_rank) {
  Call c;
  const Attrs attrs{activation, has_ignore_index, ignore_index, spatial_rank};
  if (std::string message = MakeCall(kSumsOp, y, labels, attrs, &c); !message.empty()) {
    return ErrorOf(message);
  }
  if (c.problem.batch == 0) return ffi::Error::Success();
  const LabelError error = xla_call::WithTypes<xla_call::CpuSums>(
      c, ParallelFor(host_parallel_for), y.untyped_data(), labels.untyped_data(),
      tp->untyped_data(), fp->untyped_data(), fn->untyped_data());
  return ErrorOf(label_error_message(kSumsOp, error, c.problem));
}

ffi::Error GradCpu(ffi::AnyBuffer y, ffi::AnyBuffer labels, ffi::AnyBuffer d_tp,
                   ffi::AnyBuffer d_fp, ffi::AnyBuffer d_fn, ffi::Result<ffi::AnyBuffer> grad,
                   int32_t activation, bool has_ignore_index, int64_t ignore_index,
                   int64_t spatial_rank) {
  Call c;
  const Attrs attrs{activation, has_ignore_index, ignore_index, spatial_rank};
  std::string message = MakeCall(kGradOp, y, labels, attrs, &c);
  const ffi::AnyBuffer* upstream[3] = {&d_tp, &d_fp, &d_fn};
  if (message.empty()) message = CheckUpstreams(upstream, c);
  if (!message.empty()) return ErrorOf(message);
  if (c.problem.batch == 0 || c.problem.voxels == 0) return ffi::Error::Success();
  const LabelError error = xla_call::WithTypes<xla_call::CpuGrad>(
      c, ParallelFor(host_parallel_for), y.untyped_data(), labels.untyped_data(),
      d_tp.untyped_data(), d_fp.untyped_data(), d_fn.untyped_data(), grad->untyped_data());
  return ErrorOf(label_error_message(kGradOp, error, c.problem));
}

}  // namespace
}  // namespace jax_ffi
}  // namespace tfversky

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(TfverskySumsCpu, tfversky::jax_ffi::SumsCpu,
                              tfversky::jax_ffi::WithAttrs(xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // y_pred
                                  .Arg<xla::ffi::AnyBuffer>()  // labels
                                  .Ret<xla::ffi::AnyBuffer>()  // tp
                                  .Ret<xla::ffi::AnyBuffer>()  // fp
                                  .Ret<xla::ffi::AnyBuffer>()  // fn
                                  ));

XLA_FFI_DEFINE_HANDLER_SYMBOL(TfverskySumsGradCpu, tfversky::jax_ffi::GradCpu,
                              tfversky::jax_ffi::WithAttrs(xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // y_pred
                                  .Arg<xla::ffi::AnyBuffer>()  // labels
                                  .Arg<xla::ffi::AnyBuffer>()  // dL/dTP
                                  .Arg<xla::ffi::AnyBuffer>()  // dL/dFP
                                  .Arg<xla::ffi::AnyBuffer>()  // dL/dFN
                                  .Ret<xla::ffi::AnyBuffer>()  // dL/dy_pred
                                  ));

#pragma GCC visibility pop
