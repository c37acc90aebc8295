// host_parallel_for: threads of its own for callers without a thread pool (XLA custom calls,
// the XLA FFI handlers of the JAX binding). Each call starts its threads (one per CPU this
// process may run on, at most one per task) and joins them before it returns.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

#include "tversky_kernels.h"

namespace tfversky {
namespace {

int host_threads() {
  static const int threads = [] {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1, int(std::thread::hardware_concurrency()));
  }();
  return threads;
}

}  // namespace

// Tasks are claimed a few at a time from a shared counter: uneven tasks (ignored voxels,
// cache misses) still balance.
void host_parallel_for(int64_t tasks, const std::function<void(int64_t, int64_t)>& work) {
  const int64_t threads = std::min<int64_t>(host_threads(), tasks);
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

}  // namespace tfversky
