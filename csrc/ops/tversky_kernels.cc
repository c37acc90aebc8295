// TensorFlow kernels of the fused Tversky ops: input checks, output allocation, and the
// calls into the framework-free kernels (csrc/kernels). CPU work runs on TensorFlow's
// intra-op thread pool. The GPU kernels (GOOGLE_CUDA builds) run on the op's CUDA stream.
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "tversky_kernels.h"
#include "tversky_op_attrs.h"

#if GOOGLE_CUDA
#include "xla/stream_executor/stream.h"
#endif

namespace tfversky {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

struct CpuDevice {};
struct GpuDevice {};

// TensorFlow's element types to the kernels' (same layout).
template <class T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<Eigen::half> {
  using type = Half;
};
template <>
struct KernelType<Eigen::bfloat16> {
  using type = BFloat16;
};
static_assert(sizeof(Eigen::half) == sizeof(Half) && sizeof(Eigen::bfloat16) == sizeof(BFloat16),
              "16-bit float layouts differ");

template <class T>
const typename KernelType<T>::type* kernel_data(const Tensor& t) {
  return reinterpret_cast<const typename KernelType<T>::type*>(t.flat<T>().data());
}

template <class T>
typename KernelType<T>::type* kernel_data(Tensor* t) {
  return reinterpret_cast<typename KernelType<T>::type*>(t->flat<T>().data());
}

absl::Status LabelStatus(const char* op, const LabelError& e, const Problem& p) {
  return StatusOf(label_error_message(op, e, p));
}

// Runs CPU work on the op's intra-op thread pool. Results do not depend on the split.
ParallelFor CpuParallelFor(OpKernelContext* ctx, const Problem& p) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  // Rough cycles per task, for the pool's sharding.
  const int64_t cost = kCpuTaskVoxels * std::max<int64_t>(p.classes, 2) * 20;
  return [pool, cost](int64_t tasks, const std::function<void(int64_t, int64_t)>& work) {
    pool->ParallelFor(tasks, tsl::thread::ThreadPool::SchedulingParams::Adaptive(cost), work);
  };
}

#if GOOGLE_CUDA
void* GpuStream(OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

absl::Status CudaStatus(const char* op, const char* message) {
  if (message == nullptr) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(op, ": CUDA error: ", message));
}
#endif

// What both op kernels share: the attributes, read once, and each call's problem.
class FusedTverskyOpKernel : public OpKernel {
 protected:
  FusedTverskyOpKernel(OpKernelConstruction* ctx, const char* op) : OpKernel(ctx), op_(op) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &attrs_));
  }

  // The problem of y_pred (input 0) and labels (input 1), class ids if `sparse`.
  absl::Status MakeProblem(OpKernelContext* ctx, bool sparse, Problem* p) const {
    *p = attrs_;
    return SetSizes(op_, ctx->input(0).shape(), ctx->input(1).shape(), sparse, p);
  }

  const char* const op_;  // the op's name without namespace, for error messages

 private:
  Problem attrs_;  // the attributes' fields; the sizes are each call's
};

template <class Device, class T, class L>
class FusedTverskySumsOp : public FusedTverskyOpKernel {
  using KT = typename KernelType<T>::type;
  using Sum = Acc<KT>;

 public:
  explicit FusedTverskySumsOp(OpKernelConstruction* ctx)
      : FusedTverskyOpKernel(ctx, "FusedTverskySums") {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_pred = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    Problem p;
    OP_REQUIRES_OK(ctx, MakeProblem(ctx, kSparseLabels<L>, &p));
    const TensorShape sums_shape({p.batch, p.classes});
    Tensor *tp = nullptr, *fp = nullptr, *fn = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, sums_shape, &tp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, sums_shape, &fp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, sums_shape, &fn));
    if (p.batch == 0) return;
    Sum* out[3] = {tp->flat<Sum>().data(), fp->flat<Sum>().data(), fn->flat<Sum>().data()};
    if constexpr (std::is_same<Device, CpuDevice>::value) {
      const LabelError error = sums_cpu<KT, L>(p, kernel_data<T>(y_pred), labels.flat<L>().data(),
                                               out[0], out[1], out[2], CpuParallelFor(ctx, p));
      OP_REQUIRES_OK(ctx, LabelStatus(op_, error, p));
    } else {
#if GOOGLE_CUDA
      const size_t bytes = sums_cuda_workspace_bytes<KT, L>(p);
      Tensor workspace;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(tensorflow::DT_INT8,
                                             TensorShape({std::max<int64_t>(int64_t(bytes), 1)}),
                                             &workspace));
      OP_REQUIRES_OK(ctx, CudaStatus(op_, sums_cuda<KT, L>(
                                              p, kernel_data<T>(y_pred), labels.flat<L>().data(),
                                              out[0], out[1], out[2],
                                              workspace.flat<int8_t>().data(), bytes,
                                              GpuStream(ctx))));
#endif
    }
  }
};

template <class Device, class T, class L>
class FusedTverskySumsGradOp : public FusedTverskyOpKernel {
  using KT = typename KernelType<T>::type;
  using Sum = Acc<KT>;

 public:
  explicit FusedTverskySumsGradOp(OpKernelConstruction* ctx)
      : FusedTverskyOpKernel(ctx, "FusedTverskySumsGrad") {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_pred = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    Problem p;
    OP_REQUIRES_OK(ctx, MakeProblem(ctx, kSparseLabels<L>, &p));
    for (int i = 2; i < 5; ++i) {
      OP_REQUIRES_OK(ctx, CheckUpstream(op_, ctx->input(i).shape(), i, p));
    }
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, y_pred.shape(), &grad));
    if (p.batch == 0 || p.voxels == 0) return;
    const Sum* d_tp = ctx->input(2).flat<Sum>().data();
    const Sum* d_fp = ctx->input(3).flat<Sum>().data();
    const Sum* d_fn = ctx->input(4).flat<Sum>().data();
    if constexpr (std::is_same<Device, CpuDevice>::value) {
      const LabelError error =
          sums_grad_cpu<KT, L>(p, kernel_data<T>(y_pred), labels.flat<L>().data(), d_tp, d_fp,
                               d_fn, kernel_data<T>(grad), CpuParallelFor(ctx, p));
      OP_REQUIRES_OK(ctx, LabelStatus(op_, error, p));
    } else {
#if GOOGLE_CUDA
      OP_REQUIRES_OK(ctx, CudaStatus(op_, sums_grad_cuda<KT, L>(
                                              p, kernel_data<T>(y_pred), labels.flat<L>().data(),
                                              d_tp, d_fp, d_fn, kernel_data<T>(grad),
                                              GpuStream(ctx))));
#endif
    }
  }
};

}  // namespace

// Kernels for exactly the implemented types: T in {half, bfloat16, float, double}; labels
// uint8, int32, int64 (class ids) or the sum type (dense targets); Tsum float (double for
// double). The shape functions reject other combinations with a message.
#define TFVERSKY_REGISTER(DEVICE, DEVICE_NAME, T, L)                                    \
  REGISTER_KERNEL_BUILDER(Name("Tfversky>FusedTverskySums")                             \
                              .Device(DEVICE_NAME)                                      \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<L>("Tlabels")                             \
                              .TypeConstraint<Acc<KernelType<T>::type>>("Tsum"),        \
                          FusedTverskySumsOp<DEVICE, T, L>);                            \
  REGISTER_KERNEL_BUILDER(Name("Tfversky>FusedTverskySumsGrad")                         \
                              .Device(DEVICE_NAME)                                      \
                              .TypeConstraint<T>("T")                                   \
                              .TypeConstraint<L>("Tlabels")                             \
                              .TypeConstraint<Acc<KernelType<T>::type>>("Tsum"),        \
                          FusedTverskySumsGradOp<DEVICE, T, L>);

#define TFVERSKY_REGISTER_ALL_LABELS(DEVICE, DEVICE_NAME, T) \
  TFVERSKY_REGISTER(DEVICE, DEVICE_NAME, T, uint8_t)         \
  TFVERSKY_REGISTER(DEVICE, DEVICE_NAME, T, int32_t)         \
  TFVERSKY_REGISTER(DEVICE, DEVICE_NAME, T, int64_t)         \
  TFVERSKY_REGISTER(DEVICE, DEVICE_NAME, T, Acc<KernelType<T>::type>)

#define TFVERSKY_REGISTER_ALL(DEVICE, DEVICE_NAME)                \
  TFVERSKY_REGISTER_ALL_LABELS(DEVICE, DEVICE_NAME, Eigen::half)     \
  TFVERSKY_REGISTER_ALL_LABELS(DEVICE, DEVICE_NAME, Eigen::bfloat16) \
  TFVERSKY_REGISTER_ALL_LABELS(DEVICE, DEVICE_NAME, float)           \
  TFVERSKY_REGISTER_ALL_LABELS(DEVICE, DEVICE_NAME, double)

TFVERSKY_REGISTER_ALL(CpuDevice, ::tensorflow::DEVICE_CPU)
#if GOOGLE_CUDA
TFVERSKY_REGISTER_ALL(GpuDevice, ::tensorflow::DEVICE_GPU)
#endif

#undef TFVERSKY_REGISTER_ALL
#undef TFVERSKY_REGISTER_ALL_LABELS
#undef TFVERSKY_REGISTER

}  // namespace tfversky
