// Host custom-call targets of the fused ops inside XLA: the CPU kernels, on threads of
// their own. A custom call gets no thread pool from XLA, so each call starts its threads
// (one per CPU this process may run on, at most one per task) and joins them before it
// returns; the kernels split the volume into fixed tasks and reduce them in task order, so
// the results do not depend on the thread count (the TF kernels' determinism, unchanged).
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <system_error>
#include <thread>
#include <vector>

#include "tversky_kernels.h"
#include "tversky_xla_call.h"

namespace tfversky {
namespace xla_call {
namespace {

int HostThreads() {
  static const int threads = [] {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1, int(std::thread::hardware_concurrency()));
  }();
  return threads;
}

// Tasks are claimed a few at a time from a shared counter: uneven tasks (ignored voxels,
// cache misses) still balance.
void HostParallelFor(int64_t tasks, const std::function<void(int64_t, int64_t)>& work) {
  const int64_t threads = std::min<int64_t>(HostThreads(), tasks);
  if (threads <= 1) {
    if (tasks > 0) work(0, tasks);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, tasks / (threads * 8));
  std::atomic<int64_t> next{0};
  auto loop = [&] {
    for (int64_t begin; (begin = next.fetch_add(chunk)) < tasks;) {
      work(begin, std::min(begin + chunk, tasks));
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(size_t(threads - 1));
  for (int64_t i = 1; i < threads; ++i) {
    try {
      workers.emplace_back(loop);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones started (and this one) do the rest
    }
  }
  loop();
  for (std::thread& worker : workers) worker.join();
}

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
                                            HostParallelFor);
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
        static_cast<const Acc<T>*>(in[4]), grad, HostParallelFor);
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
