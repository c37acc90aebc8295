// GPU check of the XLA lowering's CUDA custom-call targets without TensorFlow: calls
// SumsCuda / GradCuda exactly as XLA's CUDA runtime does (stream, device buffers in operand
// then output order, the opaque string tversky_xla_ops.cc writes) and compares them with the
// CPU kernels on the same data. Built with CUDA (target tfversky_xla_cuda_check); run by
// scripts/gpu_check.sh. Exit status 0 when every case matches, 1 otherwise.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "tversky_kernels.h"
#include "tversky_xla_call.h"

namespace tfversky {
namespace xla_call {
namespace {

void Serial(int64_t tasks, const std::function<void(int64_t, int64_t)>& work) { work(0, tasks); }

bool Ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::printf("  %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

template <class V>
void* Device(const std::vector<V>& host) {
  void* d = nullptr;
  if (Ok(cudaMalloc(&d, std::max<size_t>(host.size() * sizeof(V), 1)), "cudaMalloc")) {
    cudaMemcpy(d, host.data(), host.size() * sizeof(V), cudaMemcpyHostToDevice);
  }
  return d;
}

template <class V>
std::vector<V> Host(const void* d, size_t count) {
  std::vector<V> host(count);
  cudaMemcpy(host.data(), d, count * sizeof(V), cudaMemcpyDeviceToHost);
  return host;
}

template <class A>
double MaxRelError(const std::vector<A>& got, const std::vector<A>& want) {
  double scale = 1e-30, error = 0;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::abs(double(want[i])));
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::abs(double(got[i]) - double(want[i]));
    error = std::max(error, std::isnan(d) ? INFINITY : d / scale);
  }
  return error;
}

// One case: random T logits, L class ids (or dense targets), through both targets.
template <class T, class L>
bool RunCase(const char* name, Elem elem, Labels labels_kind, Problem p, double tolerance) {
  using A = Acc<T>;
  std::mt19937_64 rng(42);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int> id(0, int(num_label_values(p.classes)) - 1);
  const int64_t n = p.batch * p.voxels, elements = n * p.classes;
  std::vector<T> y(elements);
  for (T& v : y) v = from_acc<T>(A(normal(rng)));
  std::vector<L> labels(kSparseLabels<L> ? n : elements);
  for (int64_t i = 0; i < n; ++i) {
    const int k = id(rng);
    if constexpr (kSparseLabels<L>) {
      labels[i] = p.has_ignore_index && i % 10 == 3 ? L(p.ignore_index) : L(k);
    } else {
      for (int64_t c = 0; c < p.classes; ++c) labels[i * p.classes + c] = L(c == k);
    }
  }
  const int64_t sums_count = p.batch * p.classes;
  std::vector<A> tp(sums_count), fp(sums_count), fn(sums_count);
  sums_cpu<T, L>(p, y.data(), labels.data(), tp.data(), fp.data(), fn.data(), Serial);
  std::vector<A> up_tp(sums_count), up_fp(fp), up_fn(fn);  // any upstream gradient will do
  for (int64_t i = 0; i < sums_count; ++i) up_tp[i] = -tp[i] / A(7);
  std::vector<T> grad_want(elements);
  sums_grad_cpu<T, L>(p, y.data(), labels.data(), up_tp.data(), up_fp.data(), up_fn.data(),
                      grad_want.data(), Serial);

  Call call;
  call.elem = elem;
  call.labels = labels_kind;
  call.problem = p;
  call.workspace_bytes = SumsWorkspaceBytes(call);
  const std::string opaque = Encode(call);
  cudaStream_t stream;
  if (!Ok(cudaStreamCreate(&stream), "cudaStreamCreate")) return false;
  void* d_y = Device(y);
  void* d_labels = Device(labels);
  std::vector<A> zeros(sums_count, A(0));
  void* d_sums[3] = {Device(zeros), Device(zeros), Device(zeros)};
  void* d_workspace = Device(std::vector<uint8_t>(std::max<uint64_t>(call.workspace_bytes, 1)));
  void* sums_buffers[6] = {d_y, d_labels, d_sums[0], d_sums[1], d_sums[2], d_workspace};
  SumsCuda(stream, sums_buffers, opaque.data(), opaque.size(), nullptr);
  void* d_up[3] = {Device(up_tp), Device(up_fp), Device(up_fn)};
  void* d_grad = Device(std::vector<T>(elements));
  void* grad_buffers[6] = {d_y, d_labels, d_up[0], d_up[1], d_up[2], d_grad};
  GradCuda(stream, grad_buffers, opaque.data(), opaque.size(), nullptr);
  bool ok = Ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  double error = 0;
  const std::vector<A>* want[3] = {&tp, &fp, &fn};
  for (int k = 0; k < 3 && ok; ++k) {
    error = std::max(error, MaxRelError(Host<A>(d_sums[k], sums_count), *want[k]));
  }
  if (ok) {
    const std::vector<T> grad = Host<T>(d_grad, elements);
    std::vector<A> got(elements), expected(elements);
    for (int64_t i = 0; i < elements; ++i) {
      got[i] = A(to_acc(grad[i]));
      expected[i] = A(to_acc(grad_want[i]));
    }
    error = std::max(error, MaxRelError(got, expected));
  }
  ok = ok && error <= tolerance;
  std::printf("%s %-40s max relative error %.3g (tolerance %.3g)\n", ok ? "pass" : "FAIL", name,
              error, tolerance);
  for (void* d : {d_y, d_labels, d_sums[0], d_sums[1], d_sums[2], d_workspace, d_up[0], d_up[1],
                  d_up[2], d_grad}) {
    cudaFree(d);
  }
  cudaStreamDestroy(stream);
  return ok;
}

Problem MakeProblem(int64_t batch, int64_t voxels, int64_t classes, Activation activation,
                    bool ignore = false) {
  Problem p;
  p.batch = batch;
  p.voxels = voxels;
  p.classes = classes;
  p.activation = activation;
  p.has_ignore_index = ignore;
  p.ignore_index = 255;
  return p;
}

}  // namespace
}  // namespace xla_call
}  // namespace tfversky

int main() {
  using namespace tfversky;
  using namespace tfversky::xla_call;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device\n");
    return 1;
  }
  const int64_t odd = 37 * 41 * 43;  // not a multiple of any pack or block size
  bool ok = true;
  ok &= RunCase<float, uint8_t>("float32 softmax 2 classes, uint8", Elem::kFloat, Labels::kUint8,
                                MakeProblem(2, odd, 2, Activation::kSoftmax), 1e-5);
  ok &= RunCase<float, int32_t>("float32 softmax 5 classes, int32, ignore", Elem::kFloat,
                                Labels::kInt32, MakeProblem(2, odd, 5, Activation::kSoftmax, true),
                                1e-5);
  ok &= RunCase<float, float>("float32 sigmoid 3 classes, one-hot", Elem::kFloat, Labels::kDense,
                              MakeProblem(1, odd, 3, Activation::kSigmoid), 1e-5);
  ok &= RunCase<Half, int64_t>("float16 sigmoid 1 channel, int64", Elem::kHalf, Labels::kInt64,
                               MakeProblem(2, odd, 1, Activation::kSigmoid), 2e-3);
  ok &= RunCase<BFloat16, uint8_t>("bfloat16 softmax 2 classes, uint8, ignore", Elem::kBFloat16,
                                   Labels::kUint8,
                                   MakeProblem(1, odd, 2, Activation::kSoftmax, true), 2e-2);
  ok &= RunCase<double, double>("float64 probabilities 4 classes, one-hot", Elem::kDouble,
                                Labels::kDense, MakeProblem(1, odd, 4, Activation::kNone), 1e-10);
  std::printf("%s\n", ok ? "xla cuda targets: all cases pass" : "xla cuda targets: FAILED");
  return ok ? 0 : 1;
}
