// PyTorch binding of the fused Tversky kernels: the ops torch.ops.tfversky.fused_tversky_sums
// and fused_tversky_sums_grad, registered with torch.library for the CPU dispatch key (and
// CUDA, in builds with CUDA against a CUDA PyTorch). They check the tensors with the
// TensorFlow op's messages (csrc/kernels/problem.cc), adapt them (contiguous, element types)
// and call the kernels; the math is all in csrc/kernels. tfversky/_fused_torch.py adds the
// autograd formula (the gradient op) and the fake implementations torch.compile traces.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "tversky_kernels.h"
#include "tversky_xla_call.h"  // Call, Elem, Labels, WithTypes: one type switch for all bindings

#if TFVERSKY_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace tfversky {
namespace torch_ops {
namespace {

using xla_call::Call;
using xla_call::Elem;
using xla_call::Labels;

constexpr char kSumsOp[] = "FusedTverskySums";
constexpr char kGradOp[] = "FusedTverskySumsGrad";

void Check(const std::string& message) { TORCH_CHECK_VALUE(message.empty(), message); }

at::ScalarType SumType(const Call& c) {
  return c.elem == Elem::kDouble ? at::kDouble : at::kFloat;
}

// The call of y_pred and labels, checked; the tensors are then read as contiguous.
Call MakeCall(const char* op, const at::Tensor& y, const at::Tensor& labels, int64_t activation,
              bool has_ignore_index, int64_t ignore_index) {
  const std::string prefix = std::string(op) + ": ";
  Call c;
  switch (y.scalar_type()) {
    case at::kHalf: c.elem = Elem::kHalf; break;
    case at::kBFloat16: c.elem = Elem::kBFloat16; break;
    case at::kFloat: c.elem = Elem::kFloat; break;
    case at::kDouble: c.elem = Elem::kDouble; break;
    default:
      TORCH_CHECK_TYPE(false, prefix, "y_pred must be float16, bfloat16, float32 or float64");
  }
  const at::ScalarType label_type = labels.scalar_type();
  if (label_type == at::kByte) {
    c.labels = Labels::kUint8;
  } else if (label_type == at::kInt) {
    c.labels = Labels::kInt32;
  } else if (label_type == at::kLong) {
    c.labels = Labels::kInt64;
  } else {
    TORCH_CHECK_TYPE(label_type == SumType(c), prefix,
                     "labels must be uint8, int32 or int64 class ids, or one-hot/soft targets of "
                     "the sums' type (", SumType(c), " for this y_pred)");
    c.labels = Labels::kDense;
  }
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 2, prefix, "unknown activation");
  TORCH_CHECK_VALUE(labels.device() == y.device(), prefix, "labels are on ", labels.device(),
                    ", y_pred on ", y.device());
  c.problem.activation = Activation(activation);
  c.problem.has_ignore_index = has_ignore_index;
  c.problem.ignore_index = ignore_index;
  Check(set_sizes(op, y.sizes().vec(), labels.sizes().vec(), c.labels != Labels::kDense,
                  &c.problem));
  return c;
}

// Runs CPU work on PyTorch's intra-op thread pool. Results do not depend on the split.
void TorchParallelFor(int64_t tasks, const std::function<void(int64_t, int64_t)>& work) {
  at::parallel_for(0, tasks, 1, work);
}

std::vector<at::Tensor> Upstreams(const Call& c, const at::Tensor& y,
                                  std::initializer_list<at::Tensor> upstream) {
  std::vector<at::Tensor> out;
  int input = 2;
  for (const at::Tensor& u : upstream) {
    Check(check_upstream(kGradOp, u.sizes().vec(), input++, c.problem));
    TORCH_CHECK_VALUE(u.device() == y.device(), kGradOp, ": the upstream gradients are on ",
                      u.device(), ", y_pred on ", y.device());
    out.push_back(u.to(SumType(c)).contiguous());
  }
  return out;
}

using Sums = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Sums EmptySums(const Call& c, const at::Tensor& y) {
  const auto options = y.options().dtype(SumType(c));
  const std::vector<int64_t> shape = {c.problem.batch, c.problem.classes};
  return {at::empty(shape, options), at::empty(shape, options), at::empty(shape, options)};
}

Sums SumsCpuOp(const at::Tensor& y_pred, const at::Tensor& labels, int64_t activation,
               bool has_ignore_index, int64_t ignore_index) {
  const Call c = MakeCall(kSumsOp, y_pred, labels, activation, has_ignore_index, ignore_index);
  const at::Tensor y = y_pred.contiguous(), l = labels.contiguous();
  Sums sums = EmptySums(c, y);
  if (c.problem.batch == 0) return sums;
  const LabelError error = xla_call::WithTypes<xla_call::CpuSums>(
      c, ParallelFor(TorchParallelFor), y.const_data_ptr(), l.const_data_ptr(),
      std::get<0>(sums).mutable_data_ptr(), std::get<1>(sums).mutable_data_ptr(),
      std::get<2>(sums).mutable_data_ptr());
  Check(label_error_message(kSumsOp, error, c.problem));
  return sums;
}

at::Tensor GradCpuOp(const at::Tensor& y_pred, const at::Tensor& labels, const at::Tensor& d_tp,
                     const at::Tensor& d_fp, const at::Tensor& d_fn, int64_t activation,
                     bool has_ignore_index, int64_t ignore_index) {
  const Call c = MakeCall(kGradOp, y_pred, labels, activation, has_ignore_index, ignore_index);
  const std::vector<at::Tensor> up = Upstreams(c, y_pred, {d_tp, d_fp, d_fn});
  const at::Tensor y = y_pred.contiguous(), l = labels.contiguous();
  at::Tensor grad = at::empty(y.sizes(), y.options());
  if (c.problem.batch == 0 || c.problem.voxels == 0) return grad;
  const LabelError error = xla_call::WithTypes<xla_call::CpuGrad>(
      c, ParallelFor(TorchParallelFor), y.const_data_ptr(), l.const_data_ptr(),
      up[0].const_data_ptr(), up[1].const_data_ptr(), up[2].const_data_ptr(),
      grad.mutable_data_ptr());
  Check(label_error_message(kGradOp, error, c.problem));
  return grad;
}

#if TFVERSKY_TORCH_CUDA
// On the GPU a kernel cannot raise: an out-of-range label makes its sample's sums (or its
// voxel's gradient) NaN, as in the TensorFlow op.
void CheckCuda(const char* op, const char* error) {
  TORCH_CHECK(error == nullptr, op, ": CUDA error: ", error == nullptr ? "" : error);
}

struct SumsCuda {
  template <class T, class L>
  static const char* run(const Call& c, const void* y, const void* labels, void* tp, void* fp,
                         void* fn, const at::Tensor& like, void* stream) {
    const size_t bytes = sums_cuda_workspace_bytes<T, L>(c.problem);
    at::Tensor workspace =
        at::empty({int64_t(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
    return sums_cuda<T, L>(c.problem, static_cast<const T*>(y), static_cast<const L*>(labels),
                           static_cast<Acc<T>*>(tp), static_cast<Acc<T>*>(fp),
                           static_cast<Acc<T>*>(fn), workspace.mutable_data_ptr(), bytes, stream);
  }
};

struct GradCuda {
  template <class T, class L>
  static const char* run(const Call& c, const void* y, const void* labels, const void* d_tp,
                         const void* d_fp, const void* d_fn, void* grad, void* stream) {
    return sums_grad_cuda<T, L>(c.problem, static_cast<const T*>(y),
                                static_cast<const L*>(labels), static_cast<const Acc<T>*>(d_tp),
                                static_cast<const Acc<T>*>(d_fp),
                                static_cast<const Acc<T>*>(d_fn), static_cast<T*>(grad), stream);
  }
};

Sums SumsCudaOp(const at::Tensor& y_pred, const at::Tensor& labels, int64_t activation,
                bool has_ignore_index, int64_t ignore_index) {
  const Call c = MakeCall(kSumsOp, y_pred, labels, activation, has_ignore_index, ignore_index);
  const c10::cuda::CUDAGuard guard(y_pred.device());
  const at::Tensor y = y_pred.contiguous(), l = labels.contiguous();
  Sums sums = EmptySums(c, y);
  if (c.problem.batch == 0) return sums;
  void* stream = c10::cuda::getCurrentCUDAStream(y.device().index()).stream();
  CheckCuda(kSumsOp, xla_call::WithTypes<SumsCuda>(
                         c, y.const_data_ptr(), l.const_data_ptr(),
                         std::get<0>(sums).mutable_data_ptr(), std::get<1>(sums).mutable_data_ptr(),
                         std::get<2>(sums).mutable_data_ptr(), y, stream));
  return sums;
}

at::Tensor GradCudaOp(const at::Tensor& y_pred, const at::Tensor& labels, const at::Tensor& d_tp,
                      const at::Tensor& d_fp, const at::Tensor& d_fn, int64_t activation,
                      bool has_ignore_index, int64_t ignore_index) {
  const Call c = MakeCall(kGradOp, y_pred, labels, activation, has_ignore_index, ignore_index);
  const c10::cuda::CUDAGuard guard(y_pred.device());
  const std::vector<at::Tensor> up = Upstreams(c, y_pred, {d_tp, d_fp, d_fn});
  const at::Tensor y = y_pred.contiguous(), l = labels.contiguous();
  at::Tensor grad = at::empty(y.sizes(), y.options());
  if (c.problem.batch == 0 || c.problem.voxels == 0) return grad;
  void* stream = c10::cuda::getCurrentCUDAStream(y.device().index()).stream();
  CheckCuda(kGradOp, xla_call::WithTypes<GradCuda>(
                         c, y.const_data_ptr(), l.const_data_ptr(), up[0].const_data_ptr(),
                         up[1].const_data_ptr(), up[2].const_data_ptr(), grad.mutable_data_ptr(),
                         stream));
  return grad;
}
#endif

}  // namespace
}  // namespace torch_ops
}  // namespace tfversky

// activation: 0 probabilities, 1 softmax of logits, 2 sigmoid of logits (csrc Activation).
TORCH_LIBRARY(tfversky, m) {
  m.def("fused_tversky_sums(Tensor y_pred, Tensor labels, int activation, bool has_ignore_index, "
        "int ignore_index) -> (Tensor, Tensor, Tensor)");
  m.def("fused_tversky_sums_grad(Tensor y_pred, Tensor labels, Tensor grad_tp, Tensor grad_fp, "
        "Tensor grad_fn, int activation, bool has_ignore_index, int ignore_index) -> Tensor");
}

TORCH_LIBRARY_IMPL(tfversky, CPU, m) {
  m.impl("fused_tversky_sums", &tfversky::torch_ops::SumsCpuOp);
  m.impl("fused_tversky_sums_grad", &tfversky::torch_ops::GradCpuOp);
}

#if TFVERSKY_TORCH_CUDA
TORCH_LIBRARY_IMPL(tfversky, CUDA, m) {
  m.impl("fused_tversky_sums", &tfversky::torch_ops::SumsCudaOp);
  m.impl("fused_tversky_sums_grad", &tfversky::torch_ops::GradCudaOp);
}
#endif
