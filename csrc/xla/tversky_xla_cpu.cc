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
    auto* tp = static_cast<Acc<T>*>(sums[0]);
    auto* fp = static_cast<Acc<T>*>(sums[1]);
    auto* fn = static_cast<Acc<T>*>(sums[2]);
    if (p.batch == 0) return;
    const LabelError error = sums_cpu<T, L>(p, static_cast<const T*>(in[0]),
                                            static_cast<const L*>(in[1]), tp, fp, fn,
                                            host_parallel_for);
    if (error.found) {
      for (Acc<T>* sum : {tp, fp, fn}) FillNaN(sum, p.batch * p.classes);
    }
  }
};

struct Grad {
  template <class T, class L>
  static void run(const Call& c, void* out, const void** in) {
    const Problem& p = c.problem;
    T* grad = static_cast<T*>(out);
    if (p.batch == 0 || p.voxels == 0) return;
    const LabelError error = sums_grad_cpu<T, L>(
        p, static_cast<const T*>(in[0]), static_cast<const L*>(in[1]),
        static_cast<const Acc<T>*>(in[2]), static_cast<const Acc<T>*>(in[3]),
        static_cast<const Acc<T>*>(in[4]), grad, host_parallel_for);
    if (error.found) FillNaN(grad, p.batch * p.voxels * p.classes);
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
