// The contract between the XLA lowering of the fused ops (tversky_xla_ops.cc, built with
// TensorFlow's headers) and the custom-call targets that run the kernels (tversky_xla_cpu.cc,
// tversky_xla_cuda.cc: no framework headers): the target names, and the problem with its
// element types, carried in the call's opaque string ("backend_config" in the HLO).
//
// The targets use XLA's "status returning, unified" custom-call ABI (the one TensorFlow's
// XlaCustomCallV2 also emits):
//   Host: void(void* out, const void** in, const char* opaque, size_t size, Status*)
//         out is the output buffer, or for a tuple an array of the elements' buffers;
//   CUDA: void(cudaStream_t, void** buffers, const char* opaque, size_t size, Status*)
//         buffers holds the operands, then the output (tuple elements in order).
// The status cannot be set from here (TensorFlow's wheel does not export
// XlaCustomCallStatusSetFailure), so failures are NaN results, as in the CUDA kernels.
#ifndef TFVERSKY_CSRC_XLA_TVERSKY_XLA_CALL_H_
#define TFVERSKY_CSRC_XLA_TVERSKY_XLA_CALL_H_

#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "tversky_kernels.h"

extern "C" {
typedef struct XlaCustomCallStatus_ XlaCustomCallStatus;
}

namespace tfversky {
namespace xla_call {

// Registered for the platforms "Host" and "CUDA".
constexpr char kSumsTarget[] = "tfversky_fused_tversky_sums";
constexpr char kGradTarget[] = "tfversky_fused_tversky_sums_grad";

// y_pred's element type, and the labels' (kDense: one-hot/soft targets in Acc<T>).
enum class Elem : int { kHalf = 0, kBFloat16 = 1, kFloat = 2, kDouble = 3 };
enum class Labels : int { kUint8 = 0, kInt32 = 1, kInt64 = 2, kDense = 3 };

struct Call {
  Elem elem = Elem::kFloat;
  Labels labels = Labels::kUint8;
  Problem problem;
  uint64_t workspace_bytes = 0;  // CUDA sums: the scratch buffer, the call's last output
};

constexpr char kFormat[] =
    "tfversky-xla-v1 elem=%d labels=%d batch=%" PRId64 " voxels=%" PRId64 " classes=%" PRId64
    " activation=%d has_ignore_index=%d ignore_index=%" PRId64 " workspace_bytes=%" PRIu64;

inline std::string Encode(const Call& c) {
  char text[256];
  std::snprintf(text, sizeof text, kFormat, int(c.elem), int(c.labels), c.problem.batch,
                c.problem.voxels, c.problem.classes, int(c.problem.activation),
                int(c.problem.has_ignore_index), c.problem.ignore_index, c.workspace_bytes);
  return text;
}

// False if `opaque` is not an Encode()d call of a valid problem.
inline bool Decode(const char* opaque, size_t size, Call* c) {
  const std::string text(opaque, size);  // sscanf needs the terminating NUL
  int elem = -1, labels = -1, activation = -1, has_ignore_index = 0;
  Problem& p = c->problem;
  if (std::sscanf(text.c_str(), kFormat, &elem, &labels, &p.batch, &p.voxels, &p.classes,
                  &activation, &has_ignore_index, &p.ignore_index, &c->workspace_bytes) != 9 ||
      elem < 0 || elem > 3 || labels < 0 || labels > 3 || activation < 0 || activation > 2) {
    return false;
  }
  c->elem = Elem(elem);
  c->labels = Labels(labels);
  p.activation = Activation(activation);
  p.has_ignore_index = has_ignore_index != 0;
  return validate(p) == nullptr;
}

// Decode, or say on stderr why not (the call's status cannot carry it). An opaque that does
// not decode cannot come from tversky_xla_ops.cc: the caller leaves the outputs alone.
inline bool DecodeOrReport(const char* target, const char* opaque, size_t size, Call* c) {
  if (Decode(opaque, size, c)) return true;
  std::fprintf(stderr, "tfversky: custom call %s: cannot decode its backend_config '%.*s'\n",
               target, int(size), opaque);
  return false;
}

// Op::template run<T, L>(call, args...) for the call's element and label types.
template <class Op, class T, class... Args>
auto WithLabels(const Call& c, Args&&... args) {
  switch (c.labels) {
    case Labels::kUint8:
      return Op::template run<T, uint8_t>(c, args...);
    case Labels::kInt32:
      return Op::template run<T, int32_t>(c, args...);
    case Labels::kInt64:
      return Op::template run<T, int64_t>(c, args...);
    case Labels::kDense:
      break;
  }
  return Op::template run<T, Acc<T>>(c, args...);
}

template <class Op, class... Args>
auto WithTypes(const Call& c, Args&&... args) {
  switch (c.elem) {
    case Elem::kHalf:
      return WithLabels<Op, Half>(c, args...);
    case Elem::kBFloat16:
      return WithLabels<Op, BFloat16>(c, args...);
    case Elem::kFloat:
      break;
    case Elem::kDouble:
      return WithLabels<Op, double>(c, args...);
  }
  return WithLabels<Op, float>(c, args...);
}

// The CPU kernels behind untyped buffers, for WithTypes: what every binding's CPU path calls
// (the XLA host targets, the JAX FFI handlers, the PyTorch ops), each with its own threads.
struct CpuSums {
  template <class T, class L>
  static LabelError run(const Call& c, const ParallelFor& parallel_for, const void* y,
                        const void* labels, void* tp, void* fp, void* fn) {
    return sums_cpu<T, L>(c.problem, static_cast<const T*>(y), static_cast<const L*>(labels),
                          static_cast<Acc<T>*>(tp), static_cast<Acc<T>*>(fp),
                          static_cast<Acc<T>*>(fn), parallel_for);
  }
};

struct CpuGrad {
  template <class T, class L>
  static LabelError run(const Call& c, const ParallelFor& parallel_for, const void* y,
                        const void* labels, const void* d_tp, const void* d_fp, const void* d_fn,
                        void* grad) {
    return sums_grad_cpu<T, L>(c.problem, static_cast<const T*>(y), static_cast<const L*>(labels),
                               static_cast<const Acc<T>*>(d_tp), static_cast<const Acc<T>*>(d_fp),
                               static_cast<const Acc<T>*>(d_fn), static_cast<T*>(grad),
                               parallel_for);
  }
};

// The targets, registered by tversky_xla_ops.cc. Host: tversky_xla_cpu.cc.
void SumsHost(void* out, const void** in, const char* opaque, size_t size, XlaCustomCallStatus*);
void GradHost(void* out, const void** in, const char* opaque, size_t size, XlaCustomCallStatus*);

// CUDA (tversky_xla_cuda.cc, CUDA builds only). The sums' workspace: the bytes of scratch
// memory the sums of `c` need on the current device.
void SumsCuda(void* stream, void** buffers, const char* opaque, size_t size,
              XlaCustomCallStatus*);
void GradCuda(void* stream, void** buffers, const char* opaque, size_t size,
              XlaCustomCallStatus*);
uint64_t SumsWorkspaceBytes(const Call& c);

}  // namespace xla_call
}  // namespace tfversky

#endif  // TFVERSKY_CSRC_XLA_TVERSKY_XLA_CALL_H_
