// Host custom-call targets of the fused ops inside XLA: the CPU kernels, on threads of
// their own (host_parallel_for: a custom call gets no thread pool from XLA); the kernels
// split the volume into fixed tasks and reduce them in task order, so the results do not
// depend on the thread count (the TF kernels' determinism, unchanged).
#include <algorithm>
#include <limits>

#include "tversky_kernels.h"
#include "tversky_xla_call.h"

namespace tfversky {
namespace xla_call {
namespace {

template <class T>
void FillNaN(T* data, int64_t count) {
  std::fill(data, data + count, from_acc<T>(std::numeric_limits<Acc<T>>::quiet_NaN()));
}

struct Sums {
  template <class T, class L>
  static void run(const Call& c, void* out, const void** in) {
    const Problem& p = c.problem;
    void** sums = static_cast<void**>(out);
    if (p.batch == 0) return;
    const LabelError error =
        CpuSums::run<T, L>(c, host_parallel_for, in[0], in[1], sums[0], sums[1], sums[2]);
    if (error.found) {
      for (int i = 0; i < 3; ++i) FillNaN(static_cast<Acc<T>*>(sums[i]), p.batch * p.classes);
    }
  }
};

struct Grad {
  template <class T, class L>
  static void run(const Call& c, void* out, const void** in) {
    const Problem& p = c.problem;
    if (p.batch == 0 || p.voxels == 0) return;
    const LabelError error =
        CpuGrad::run<T, L>(c, host_parallel_for, in[0], in[1], in[2], in[3], in[4], out);
    if (error.found) FillNaN(static_cast<T*>(out), p.batch * p.voxels * p.classes);
  }
};

}  // namespace

void SumsHost(void* out, const void** in, const char* opaque, size_t size, XlaCustomCallStatus*) {
  Call c;
  if (DecodeOrReport(kSumsTarget, opaque, size, &c)) WithTypes<Sums>(c, out, in);
}

void GradHost(void* out, const void** in, const char* opaque, size_t size, XlaCustomCallStatus*) {
  Call c;
  if (DecodeOrReport(kGradTarget, opaque, size, &c)) WithTypes<Grad>(c, out, in);
}

}  // namespace xla_call
}  // namespace tfversky
