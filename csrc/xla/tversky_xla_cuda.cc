// CUDA custom-call targets of the fused ops inside XLA: the CUDA kernels (csrc/kernels,
// through their framework-free entry points) on the stream XLA gives the call. The sums'
// scratch memory is the call's last output, sized at compile time (SumsWorkspaceBytes).
// A launch error cannot fail the call (see tversky_xla_call.h): it is written to stderr.
#include <cstdio>

#include "tversky_kernels.h"
#include "tversky_xla_call.h"

namespace tfversky {
namespace xla_call {
namespace {

void Report(const char* target, const char* error) {
  if (error != nullptr) std::fprintf(stderr, "tfversky: custom call %s: CUDA error: %s\n", target, error);
}

struct Workspace {
  template <class T, class L>
  static uint64_t run(const Call& c) {
    return sums_cuda_workspace_bytes<T, L>(c.problem);
  }
};

// buffers: y_pred, labels | tp, fp, fn, workspace.
struct Sums {
  template <class T, class L>
  static const char* run(const Call& c, void* stream, void** buffers) {
    if (c.problem.batch == 0) return nullptr;
    return sums_cuda<T, L>(c.problem, static_cast<const T*>(buffers[0]),
                           static_cast<const L*>(buffers[1]), static_cast<Acc<T>*>(buffers[2]),
                           static_cast<Acc<T>*>(buffers[3]), static_cast<Acc<T>*>(buffers[4]),
                           buffers[5], size_t(c.workspace_bytes), stream);
  }
};

// buffers: y_pred, labels, grad_tp, grad_fp, grad_fn | grad_y_pred.
struct Grad {
  template <class T, class L>
  static const char* run(const Call& c, void* stream, void** buffers) {
    if (c.problem.batch == 0 || c.problem.voxels == 0) return nullptr;
    return sums_grad_cuda<T, L>(c.problem, static_cast<const T*>(buffers[0]),
                                static_cast<const L*>(buffers[1]),
                                static_cast<const Acc<T>*>(buffers[2]),
                                static_cast<const Acc<T>*>(buffers[3]),
                                static_cast<const Acc<T>*>(buffers[4]),
                                static_cast<T*>(buffers[5]), stream);
  }
};

}  // namespace

uint64_t SumsWorkspaceBytes(const Call& c) { return WithTypes<Workspace>(c); }

void SumsCuda(void* stream, void** buffers, const char* opaque, size_t size,
              XlaCustomCallStatus*) {
  Call c;
  if (DecodeOrReport(kSumsTarget, opaque, size, &c)) {
    Report(kSumsTarget, WithTypes<Sums>(c, stream, buffers));
  }
}

void GradCuda(void* stream, void** buffers, const char* opaque, size_t size,
              XlaCustomCallStatus*) {
  Call c;
  if (DecodeOrReport(kGradTarget, opaque, size, &c)) {
    Report(kGradTarget, WithTypes<Grad>(c, stream, buffers));
  }
}

}  // namespace xla_call
}  // namespace tfversky
