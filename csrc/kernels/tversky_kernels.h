// Framework-free entry points of the fused Tversky kernels (CPU and CUDA).
//
// Pass 1 (sums): per sample and class, TP, FP, FN of the probabilities against the labels.
// Pass 2 (grad): from dL/dTP, dL/dFP, dL/dFN (batch, classes), the gradient w.r.t. y_pred.
// Both read y_pred (B, N, C) channels-last and labels, sparse (B, N) class ids or dense
// (B, N, C) targets, N being the number of voxels per sample. See tversky_math.h.
//
// Supported element types, instantiated in tversky_cpu_<type>.cc and tversky_cuda_<type>.cu:
//   T (y_pred, gradient): Half, BFloat16, float, double
//   L (labels): uint8_t, int32_t, int64_t (sparse), or Acc<T> (dense: float, or double
//   for double inputs)
// Sums are Acc<T>: float, double for double inputs.
#ifndef TFVERSKY_CSRC_KERNELS_TVERSKY_KERNELS_H_
#define TFVERSKY_CSRC_KERNELS_TVERSKY_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tversky_math.h"

namespace tfversky {

struct Problem {
  int64_t batch = 0;
  int64_t voxels = 0;   // per sample: the product of the spatial dims
  int64_t classes = 0;  // channels of y_pred, 1..kMaxClasses
  Activation activation = Activation::kNone;
  bool has_ignore_index = false;
  int64_t ignore_index = 0;  // sparse labels equal to it are left out (w = 0)
};

// Why a problem cannot run: nullptr when it can. (Shapes and dtypes are the caller's job.)
const char* validate(const Problem& problem);  // problem.cc

// The checks and messages every framework binding shares (problem.cc), so that the
// TensorFlow op, the XLA FFI handlers and the PyTorch ops fail with the same words. Each
// returns "" when all is well, else the message, prefixed with `op`.
//
// The problem's sizes from y_pred's dims (batch, *spatial, classes) and the labels' (class
// ids if `sparse`: y_pred's without the class dim; else y_pred's), then validate().
std::string set_sizes(const char* op, const std::vector<int64_t>& y_pred,
                      const std::vector<int64_t>& labels, bool sparse, Problem* problem);
// An upstream gradient (dL/dTP, dL/dFP or dL/dFN; `input` is its input number) must be
// (batch, classes).
std::string check_upstream(const char* op, const std::vector<int64_t>& upstream, int input,
                           const Problem& problem);

// First out-of-range sparse label in flat (sample-major) order, found by the CPU kernels.
struct LabelError {
  bool found = false;
  int64_t index = 0;  // flat index into labels
  int64_t value = 0;
};

// What the CPU kernels' LabelError means, naming the value, sample and voxel ("" if none).
std::string label_error_message(const char* op, const LabelError& error, const Problem& problem);

// Runs work(begin, end) over task ranges covering [0, num_tasks) exactly once, possibly
// concurrently. The CPU kernels split the volume into tasks of a fixed size and reduce
// the per-task results in task order, so the results do not depend on how this runner
// splits the range or on the number of threads.
using ParallelFor =
    std::function<void(int64_t num_tasks, const std::function<void(int64_t, int64_t)>& work)>;

// Voxels per CPU task: fixed (determinism), small enough to balance threads, large enough
// to amortise the scheduling.
constexpr int64_t kCpuTaskVoxels = 8192;

// A ParallelFor on threads started per call and joined before it returns, one per CPU this
// process may run on (host_threads.cc): for callers that get no thread pool (XLA custom
// calls, XLA FFI handlers).
void host_parallel_for(int64_t num_tasks, const std::function<void(int64_t, int64_t)>& work);

template <class T, class L>
LabelError sums_cpu(const Problem& problem, const T* y_pred, const L* labels, Acc<T>* tp,
                    Acc<T>* fp, Acc<T>* fn, const ParallelFor& parallel_for);

template <class T, class L>
LabelError sums_grad_cpu(const Problem& problem, const T* y_pred, const L* labels,
                         const Acc<T>* grad_tp, const Acc<T>* grad_fp, const Acc<T>* grad_fn,
                         T* grad_y_pred, const ParallelFor& parallel_for);

// ---- CUDA (defined in tversky_cuda_<type>.cu when built with CUDA) ----
//
// All pointers are device pointers; `stream` is a cudaStream_t. The launches are
// asynchronous. Out-of-range sparse labels cannot stop a kernel: they turn the sums of
// their sample (pass 1) or the gradient of their voxel (pass 2) into NaN.
// Return nullptr on success, or the CUDA error string.

// Bytes of device scratch memory the sums need (partial sums of the first stage), for the
// current device. Pass the same problem to sums_cuda.
template <class T, class L>
size_t sums_cuda_workspace_bytes(const Problem& problem);

template <class T, class L>
const char* sums_cuda(const Problem& problem, const T* y_pred, const L* labels, Acc<T>* tp,
                      Acc<T>* fp, Acc<T>* fn, void* workspace, size_t workspace_bytes,
                      void* stream);

template <class T, class L>
const char* sums_grad_cuda(const Problem& problem, const T* y_pred, const L* labels,
                           const Acc<T>* grad_tp, const Acc<T>* grad_fp, const Acc<T>* grad_fn,
                           T* grad_y_pred, void* stream);

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_KERNELS_TVERSKY_KERNELS_H_
