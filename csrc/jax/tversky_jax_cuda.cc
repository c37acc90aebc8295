// XLA FFI handlers of the fused Tversky ops for JAX on the GPU ("CUDA" platform): the CUDA
// kernels' launch functions on the stream XLA gives the call, the sums' scratch memory from
// XLA's scratch allocator. A kernel cannot raise: an out-of-range label makes its sample's
// sums (or its voxel's gradient) NaN, as in the TensorFlow op on the GPU.
#include <cuda_runtime.h>

#include "tversky_jax.h"

namespace tfversky {
namespace jax_ffi {
namespace {

ffi::Error CudaError(const char* op, const char* error) {
  if (error == nullptr) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInternal, std::string(op) + ": CUDA error: " + error);
}

struct Workspace {
  template <class T, class L>
  static size_t run(const Call& c) {
    return sums_cuda_workspace_bytes<T, L>(c.problem);
  }
};

struct Sums {
  template <class T, class L>
  static const char* run(const Call& c, cudaStream_t stream, void* workspace, size_t bytes,
                         const void* y, const void* labels, void* tp, void* fp, void* fn) {
    return sums_cuda<T, L>(c.problem, static_cast<const T*>(y), static_cast<const L*>(labels),
                           static_cast<Acc<T>*>(tp), static_cast<Acc<T>*>(fp),
                           static_cast<Acc<T>*>(fn), workspace, bytes, stream);
  }
};

struct Grad {
  template <class T, class L>
  static const char* run(const Call& c, cudaStream_t stream, const void* y, const void* labels,
                         const void* d_tp, const void* d_fp, const void* d_fn, void* grad) {
    return sums_grad_cuda<T, L>(c.problem, static_cast<const T*>(y),
                                static_cast<const L*>(labels), static_cast<const Acc<T>*>(d_tp),
                                static_cast<const Acc<T>*>(d_fp),
                                static_cast<const Acc<T>*>(d_fn), static_cast<T*>(grad), stream);
  }
};

ffi::Error SumsCuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y,
                    ffi::AnyBuffer labels, ffi::Result<ffi::AnyBuffer> tp,
                    ffi::Result<ffi::AnyBuffer> fp, ffi::Result<ffi::AnyBuffer> fn,
                    int32_t activation, bool has_ignore_index, int64_t ignore_index,
                    int64_t spatial_rank) {
  Call c;
  const Attrs attrs{activation, has_ignore_index, ignore_index, spatial_rank};
  if (std::string message = MakeCall(kSumsOp, y, labels, attrs, &c); !message.empty()) {
    return ErrorOf(message);
  }
  if (c.problem.batch == 0) return ffi::Error::Success();
  const size_t bytes = xla_call::WithTypes<Workspace>(c);
  void* workspace = nullptr;
  if (bytes > 0) {
    auto allocated = scratch.Allocate(bytes, 256);
    if (!allocated.has_value()) {
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        std::string(kSumsOp) + ": no scratch memory for the partial sums");
    }
    workspace = *allocated;
  }
  return CudaError(kSumsOp, xla_call::WithTypes<Sums>(
                                c, stream, workspace, bytes, y.untyped_data(),
                                labels.untyped_data(), tp->untyped_data(), fp->untyped_data(),
                                fn->untyped_data()));
}

ffi::Error GradCuda(cudaStream_t stream, ffi::AnyBuffer y, ffi::AnyBuffer labels,
                    ffi::AnyBuffer d_tp, ffi::AnyBuffer d_fp, ffi::AnyBuffer d_fn,
                    ffi::Result<ffi::AnyBuffer> grad, int32_t activation, bool has_ignore_index,
                    int64_t ignore_index, int64_t spatial_rank) {
  Call c;
  const Attrs attrs{activation, has_ignore_index, ignore_index, spatial_rank};
  std::string message = MakeCall(kGradOp, y, labels, attrs, &c);
  const ffi::AnyBuffer* upstream[3] = {&d_tp, &d_fp, &d_fn};
  if (message.empty()) message = CheckUpstreams(upstream, c);
  if (!message.empty()) return ErrorOf(message);
  if (c.problem.batch == 0 || c.problem.voxels == 0) return ffi::Error::Success();
  return CudaError(kGradOp, xla_call::WithTypes<Grad>(
                                c, stream, y.untyped_data(), labels.untyped_data(),
                                d_tp.untyped_data(), d_fp.untyped_data(), d_fn.untyped_data(),
                                grad->untyped_data()));
}

}  // namespace
}  // namespace jax_ffi
}  // namespace tfversky

#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(TfverskySumsCuda, tfversky::jax_ffi::SumsCuda,
                              tfversky::jax_ffi::WithAttrs(xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .Arg<xla::ffi::AnyBuffer>()  // y_pred
                                  .Arg<xla::ffi::AnyBuffer>()  // labels
                                  .Ret<xla::ffi::AnyBuffer>()  // tp
                                  .Ret<xla::ffi::AnyBuffer>()  // fp
                                  .Ret<xla::ffi::AnyBuffer>()  // fn
                                  ));

XLA_FFI_DEFINE_HANDLER_SYMBOL(TfverskySumsGradCuda, tfversky::jax_ffi::GradCuda,
                              tfversky::jax_ffi::WithAttrs(xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<xla::ffi::AnyBuffer>()  // y_pred
                                  .Arg<xla::ffi::AnyBuffer>()  // labels
                                  .Arg<xla::ffi::AnyBuffer>()  // dL/dTP
                                  .Arg<xla::ffi::AnyBuffer>()  // dL/dFP
                                  .Arg<xla::ffi::AnyBuffer>()  // dL/dFN
                                  .Ret<xla::ffi::AnyBuffer>()  // dL/dy_pred
                                  ));

#pragma GCC visibility pop
