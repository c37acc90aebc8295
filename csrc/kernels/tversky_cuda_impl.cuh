// CUDA kernels of the fused Tversky sums and their gradient: the implementation, included by
// tversky_cuda_<type>.cu, which instantiate it for one input type each.
//
// Plain CUDA (only <cuda_runtime.h>): no TensorFlow headers, so the same objects link into
// the TensorFlow op and the pybind11 module (docs/fused_op.md, "Build").
//
// Sums, stage 1: a 2D grid, y over samples, x over the voxels of a sample (grid-stride, so
// the grid is sized from the device, not the volume). One or two classes: one thread per
// 16-byte pack of voxels, loaded as one vector where the sample's data is aligned (scalar
// loads for the unaligned head and tail). More classes: one thread per (voxel, class)
// element. Each block reduces its partial TP, FP, FN with warp shuffles and a fixed tree in
// shared memory and writes them to the workspace. Stage 2 adds the blocks' partials of each
// (sample, class) in double, one block per output, in a fixed order. No atomics: the result depends only on the
// inputs and the launch configuration, which depends only on the problem and the device.
// Indices are int64 throughout (volumes beyond 2^31 elements).
//
// Out-of-range sparse labels cannot raise from a kernel: their weight becomes NaN, so the
// sums of their sample, and their voxel's gradient, are NaN.
#ifndef TFVERSKY_CSRC_KERNELS_TVERSKY_CUDA_IMPL_CUH_
#define TFVERSKY_CSRC_KERNELS_TVERSKY_CUDA_IMPL_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "tversky_dispatch.h"
#include "tversky_kernels.h"

namespace tfversky {
namespace cuda_impl {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

// ---- labels on the device ----

// Weight and target of one voxel's label. Sparse: the shared rule, with NaN as the weight
// of an out-of-range label (see the file comment). Dense: weight 1, target read.
template <class A, class L, bool kSparse = kSparseLabels<L>>
struct DeviceLabels {
  const L* labels;
  SparseLabelRule<L> rule;

  // The labels of sample b, the problem having `voxels` voxels per sample.
  __device__ __forceinline__ DeviceLabels sample(int64_t b, int64_t voxels) const {
    return {labels + b * voxels, rule};
  }
  __device__ __forceinline__ A weight(int64_t v) const {
    const L label = labels[v];
    return rule.bad(label) ? quiet_nan<A>() : rule.template weight<A>(label);
  }
  __device__ __forceinline__ A target(int64_t v, int64_t c) const {
    return rule.template target<A>(labels[v], c);
  }
};

template <class A, class L>
struct DeviceLabels<A, L, false> {
  const L* labels;
  int64_t classes;

  __device__ __forceinline__ DeviceLabels sample(int64_t b, int64_t voxels) const {
    return {labels + b * voxels * classes, classes};
  }
  __device__ __forceinline__ A weight(int64_t) const { return A(1); }
  __device__ __forceinline__ A target(int64_t v, int64_t c) const {
    return A(labels[v * classes + c]);
  }
};

template <class A, class L>
DeviceLabels<A, L> device_labels(const Problem& p, const L* labels) {
  if constexpr (kSparseLabels<L>) {
    return {labels, make_label_rule<L>(p.classes, p.has_ignore_index, p.ignore_index)};
  } else {
    return {labels, p.classes};
  }
}

// dL/dTP, dL/dFP, dL/dFN (batch, classes), read by the gradient kernels (tiny: cached).
template <class A>
struct Upstream {
  const A* d_tp;
  const A* d_fp;
  const A* d_fn;

  __device__ __forceinline__ GradFactors<A> factors(int64_t i) const {
    return grad_factors<A>(d_tp[i], d_fp[i], d_fn[i]);
  }
};

// ---- reductions ----

// Sum over the block, valid in thread 0: warp shuffles, then the warps' sums by warp 0.
// The order of the additions is fixed, so the result is deterministic.
template <class A>
__device__ A block_sum(A value, A* scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < int(blockDim.x / kWarpSize) ? scratch[lane] : A(0);
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

// Stage 2: out_k[b, c] = sum over blocks of partials[b, block, k, c], in double. One block
// per output: each thread adds a fixed, strided subset of the blocks' partials, then the
// block reduces the threads' totals in a fixed order (block_sum), so the result is the same
// on every run. (About a thousand partials per output: a loop in one thread would serialise
// them.)
template <class A>
__global__ void __launch_bounds__(kThreads)
    finalize_sums(int64_t batch, int64_t classes, int64_t blocks, const A* partials, A* tp,
                  A* fp, A* fn) {
  __shared__ double scratch[kThreads / kWarpSize];
  const int64_t outputs = batch * 3 * classes;
  for (int64_t o = blockIdx.x; o < outputs; o += gridDim.x) {
    const int64_t b = o / (3 * classes), k = (o / classes) % 3, c = o % classes;
    double total = 0.0;
    for (int64_t block = threadIdx.x; block < blocks; block += blockDim.x) {
      total += double(partials[((b * blocks + block) * 3 + k) * classes + c]);
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) {
      A* out = k == 0 ? tp : (k == 1 ? fp : fn);
      out[b * classes + c] = A(total);
    }
  }
}

// ---- one or two classes: one thread per 16-byte pack of voxels ----

// kVoxels voxels of kClasses values of T, as one 16-byte vector.
template <class T, int kClasses>
union Pack {
  static constexpr int kVoxels = int(16 / (kClasses * sizeof(T)));
  uint4 raw;
  T values[kVoxels * kClasses];
};

// The voxels of a sample that are read as packs: [head, head + packs * kVoxels). The
// others (fewer than 2 kVoxels) are read one by one. Packs need 16-byte alignment, at the
// same offset in every array they touch (y_pred, and the gradient in pass 2).
struct PackSplit {
  int64_t head, packs, tail_start, scalars;
};

template <class T, int kClasses>
__device__ PackSplit split_packs(const void* data, const void* other, int64_t voxels) {
  constexpr int64_t kVoxelBytes = kClasses * sizeof(T);
  const int64_t misalign = int64_t(reinterpret_cast<uintptr_t>(data) % 16);
  const bool packable = misalign % kVoxelBytes == 0 &&
                        misalign == int64_t(reinterpret_cast<uintptr_t>(other) % 16);
  PackSplit s;
  const int64_t aligned_from = ((16 - misalign) % 16) / kVoxelBytes;
  s.head = packable && aligned_from < voxels ? aligned_from : voxels;
  s.packs = (voxels - s.head) / Pack<T, kClasses>::kVoxels;
  s.tail_start = s.head + s.packs * Pack<T, kClasses>::kVoxels;
  s.scalars = s.head + (voxels - s.tail_start);
  return s;
}

// Index of the k-th voxel read one by one: the head, then the tail.
__device__ __forceinline__ int64_t scalar_voxel(const PackSplit& s, int64_t k) {
  return k < s.head ? k : s.tail_start + (k - s.head);
}

template <class T, class L, Activation kAct, int kClasses>
struct BinaryVoxel {
  using A = Acc<T>;

  // Adds voxel v's TP, FP, FN to acc[3][kClasses].
  static __device__ __forceinline__ void accumulate(T z0, T z1, const DeviceLabels<A, L>& labels,
                                                    int64_t v, A (&acc)[3][2]) {
    const VoxelProbabilities<A> pr = binary_probabilities<kAct, kClasses, A>(to_acc(z0), to_acc(z1));
    const A w = labels.weight(v);
    const A p[2] = {pr.p0, pr.p1}, q[2] = {pr.q0, pr.q1};
#pragma unroll
    for (int c = 0; c < kClasses; ++c) {
      const A g = labels.target(v, c);
      acc[0][c] += w * p[c] * g;
      acc[1][c] += w * p[c] * (A(1) - g);
      acc[2][c] += w * q[c] * g;
    }
  }

  // dL/dz of voxel v, written to dz[0..kClasses).
  static __device__ __forceinline__ void gradient(T z0, T z1, const DeviceLabels<A, L>& labels,
                                                  int64_t v, const GradFactors<A>* f, T* dz) {
    const VoxelProbabilities<A> pr = binary_probabilities<kAct, kClasses, A>(to_acc(z0), to_acc(z1));
    const A w = labels.weight(v);
    const A grad0 = grad_wrt_probability(f[0], w, labels.target(v, 0));
    if constexpr (kClasses == 1) {
      dz[0] = from_acc<T>(elementwise_chain_rule<kAct>(grad0, pr.p0, pr.q0));
    } else {
      const A grad1 = grad_wrt_probability(f[1], w, labels.target(v, 1));
      if constexpr (kAct == Activation::kSoftmax) {
        const A dz1 = pr.p0 * pr.p1 * (grad1 - grad0);
        dz[0] = from_acc<T>(-dz1);
        dz[1] = from_acc<T>(dz1);
      } else {
        dz[0] = from_acc<T>(elementwise_chain_rule<kAct>(grad0, pr.p0, pr.q0));
        dz[1] = from_acc<T>(elementwise_chain_rule<kAct>(grad1, pr.p1, pr.q1));
      }
    }
  }
};

template <class T, class L, Activation kAct, int kClasses>
__global__ void __launch_bounds__(kThreads)
    sums_binary(Problem p, const T* y_pred, DeviceLabels<Acc<T>, L> labels, Acc<T>* partials) {
  using A = Acc<T>;
  using PackT = Pack<T, kClasses>;
  using Voxel = BinaryVoxel<T, L, kAct, kClasses>;
  __shared__ A scratch[kThreads / kWarpSize];
  const int64_t thread = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const T* y = y_pred + b * p.voxels * kClasses;
    const DeviceLabels<A, L> sample_labels = labels.sample(b, p.voxels);
    A acc[3][2] = {{A(0), A(0)}, {A(0), A(0)}, {A(0), A(0)}};
    const PackSplit s = split_packs<T, kClasses>(y, y, p.voxels);
    for (int64_t k = thread; k < s.packs; k += stride) {
      const int64_t first = s.head + k * PackT::kVoxels;
      PackT pack;
      pack.raw = *reinterpret_cast<const uint4*>(y + first * kClasses);
#pragma unroll
      for (int j = 0; j < PackT::kVoxels; ++j) {
        Voxel::accumulate(pack.values[j * kClasses], pack.values[j * kClasses + kClasses - 1],
                          sample_labels, first + j, acc);
      }
    }
    for (int64_t k = thread; k < s.scalars; k += stride) {
      const int64_t v = scalar_voxel(s, k);
      Voxel::accumulate(y[v * kClasses], y[v * kClasses + kClasses - 1], sample_labels, v, acc);
    }
    A* out = partials + (b * gridDim.x + blockIdx.x) * 3 * kClasses;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
#pragma unroll
      for (int c = 0; c < kClasses; ++c) {
        const A total = block_sum(acc[k][c], scratch);
        if (threadIdx.x == 0) out[k * kClasses + c] = total;
      }
    }
  }
}

template <class T, class L, Activation kAct, int kClasses>
__global__ void __launch_bounds__(kThreads)
    grad_binary(Problem p, const T* y_pred, DeviceLabels<Acc<T>, L> labels,
                Upstream<Acc<T>> upstream, T* grad_y_pred) {
  using A = Acc<T>;
  using PackT = Pack<T, kClasses>;
  using Voxel = BinaryVoxel<T, L, kAct, kClasses>;
  const int64_t thread = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const T* y = y_pred + b * p.voxels * kClasses;
    T* out = grad_y_pred + b * p.voxels * kClasses;
    const DeviceLabels<A, L> sample_labels = labels.sample(b, p.voxels);
    const GradFactors<A> f[2] = {upstream.factors(b * kClasses),
                                 upstream.factors(b * kClasses + kClasses - 1)};
    const PackSplit s = split_packs<T, kClasses>(y, out, p.voxels);
    for (int64_t k = thread; k < s.packs; k += stride) {
      const int64_t first = s.head + k * PackT::kVoxels;
      PackT pack, dz;
      pack.raw = *reinterpret_cast<const uint4*>(y + first * kClasses);
#pragma unroll
      for (int j = 0; j < PackT::kVoxels; ++j) {
        Voxel::gradient(pack.values[j * kClasses], pack.values[j * kClasses + kClasses - 1],
                        sample_labels, first + j, f, dz.values + j * kClasses);
      }
      *reinterpret_cast<uint4*>(out + first * kClasses) = dz.raw;
    }
    for (int64_t k = thread; k < s.scalars; k += stride) {
      const int64_t v = scalar_voxel(s, k);
      Voxel::gradient(y[v * kClasses], y[v * kClasses + kClasses - 1], sample_labels, v, f,
                      out + v * kClasses);
    }
  }
}

// ---- any number of classes: one thread per (voxel, class) element ----
//
// A block holds `groups` groups of C threads; thread t handles class t % C of voxel
// group t / C, so consecutive threads read consecutive elements. Softmax couples a voxel's
// C elements: the group shares them through shared memory, and its first thread reduces
// them in class order, so a voxel costs O(C) operations and one exp per element (and the
// order of the additions is the CPU kernels'). Every thread of the block takes part in
// every round, with `active` false past the last voxel, because the reductions hold
// __syncthreads.

// The shared memory of the group reductions: one value per thread, one result per group.
template <class A>
struct GroupScratch {
  A* values;   // [blockDim.x]
  A* results;  // [groups]
  int64_t classes, c, group;

  // The group's values combined in class order (sum, or max as the CPU kernels take it).
  template <bool kMax>
  __device__ A reduce(A value) const {
    __syncthreads();  // values and results may still be read by the previous reduction
    values[threadIdx.x] = value;
    __syncthreads();
    if (c == 0) {
      A total = values[threadIdx.x];
      for (int64_t k = 1; k < classes; ++k) {
        const A x = values[threadIdx.x + k];
        total = kMax ? (x > total ? x : total) : total + x;
      }
      results[group] = total;
    }
    __syncthreads();
    return results[group];
  }
};

// Probability p and complement q of this thread's element, from its logit or probability z.
template <Activation kAct, class A>
__device__ __forceinline__ void group_probability(const GroupScratch<A>& scratch, A z, A& p,
                                                  A& q) {
  if constexpr (kAct == Activation::kSoftmax) {
    const A e = exp_approx(z - scratch.template reduce<true>(z));
    p = e * (A(1) / scratch.template reduce<false>(e));
    q = A(1) - p;
  } else if constexpr (kAct == Activation::kSigmoid) {
    sigmoid_pair<A>(z, p, q);
  } else {
    p = z;
    q = A(1) - p;
  }
}

template <class T, class L, Activation kAct>
__global__ void __launch_bounds__(kThreads)
    sums_general(Problem p, const T* y_pred, DeviceLabels<Acc<T>, L> labels, Acc<T>* partials) {
  using A = Acc<T>;
  __shared__ A scratch[3][kThreads];
  __shared__ A group_values[kThreads], group_results[kThreads];
  const int64_t classes = p.classes;
  const int64_t groups = blockDim.x / classes;
  const int64_t c = threadIdx.x % classes, group = threadIdx.x / classes;
  const GroupScratch<A> shared{group_values, group_results, classes, c, group};
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const T* y = y_pred + b * p.voxels * classes;
    const DeviceLabels<A, L> sample_labels = labels.sample(b, p.voxels);
    A tp = A(0), fp = A(0), fn = A(0);
    for (int64_t first = int64_t(blockIdx.x) * groups; first < p.voxels;
         first += int64_t(gridDim.x) * groups) {
      const int64_t v = first + group;
      const bool active = v < p.voxels;
      A prob, comp;
      group_probability<kAct>(shared, active ? to_acc(y[v * classes + c]) : A(0), prob, comp);
      if (active) {
        const A w = sample_labels.weight(v), g = sample_labels.target(v, c);
        tp += w * prob * g;
        fp += w * prob * (A(1) - g);
        fn += w * comp * g;
      }
    }
    // Per class, a fixed tree over the groups.
    __syncthreads();
    scratch[0][threadIdx.x] = tp;
    scratch[1][threadIdx.x] = fp;
    scratch[2][threadIdx.x] = fn;
    __syncthreads();
    int64_t span = 1;
    while (span < groups) span *= 2;
    for (span /= 2; span > 0; span /= 2) {
      if (group < span && group + span < groups) {
        for (int k = 0; k < 3; ++k) scratch[k][threadIdx.x] += scratch[k][threadIdx.x + span * classes];
      }
      __syncthreads();
    }
    if (group == 0) {
      A* out = partials + (b * gridDim.x + blockIdx.x) * 3 * classes;
      for (int k = 0; k < 3; ++k) out[k * classes + c] = scratch[k][c];
    }
  }
}

template <class T, class L, Activation kAct>
__global__ void __launch_bounds__(kThreads)
    grad_general(Problem p, const T* y_pred, DeviceLabels<Acc<T>, L> labels,
                 Upstream<Acc<T>> upstream, T* grad_y_pred) {
  using A = Acc<T>;
  __shared__ A group_values[kThreads], group_results[kThreads];
  const int64_t classes = p.classes;
  const int64_t groups = blockDim.x / classes;
  const int64_t c = threadIdx.x % classes, group = threadIdx.x / classes;
  const GroupScratch<A> shared{group_values, group_results, classes, c, group};
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {
    const T* y = y_pred + b * p.voxels * classes;
    const DeviceLabels<A, L> sample_labels = labels.sample(b, p.voxels);
    const GradFactors<A> factors = upstream.factors(b * classes + c);
    for (int64_t first = int64_t(blockIdx.x) * groups; first < p.voxels;
         first += int64_t(gridDim.x) * groups) {
      const int64_t v = first + group;
      const bool active = v < p.voxels;
      A prob, comp;
      group_probability<kAct>(shared, active ? to_acc(y[v * classes + c]) : A(0), prob, comp);
      const A w = active ? sample_labels.weight(v) : A(0);
      const A grad = grad_wrt_probability(factors, w, active ? sample_labels.target(v, c) : A(0));
      A dz;
      if constexpr (kAct == Activation::kSoftmax) {
        dz = prob * (grad - shared.template reduce<false>(prob * grad));  // sum_k p_k dL/dp_k
      } else {
        dz = elementwise_chain_rule<kAct>(grad, prob, comp);
      }
      if (active) grad_y_pred[(b * p.voxels + v) * classes + c] = from_acc<T>(dz);
    }
  }
}

// ---- launch configuration ----

struct Launch {
  dim3 grid, block;
};

// As many blocks as fit on the device at once (from its SM count and the kernel's
// occupancy), or fewer if the work is smaller; split between samples (y) and voxels (x).
template <class Kernel>
cudaError_t plan(Kernel kernel, const Problem& p, int threads, int64_t items_per_sample,
                 Launch* launch) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0);
  if (err != cudaSuccess) return err;
  const int64_t resident = int64_t(sms) * std::max(per_sm, 1);
  const int64_t grid_y = std::min(p.batch, kMaxGridY);
  const int64_t wanted_x = (items_per_sample + threads - 1) / threads;
  const int64_t fit_x = (resident + grid_y - 1) / grid_y;
  const int64_t grid_x = std::max<int64_t>(1, std::min({wanted_x, fit_x, kMaxGridX}));
  launch->grid = dim3(unsigned(grid_x), unsigned(grid_y));
  launch->block = dim3(unsigned(threads));
  return cudaSuccess;
}

inline int general_threads(int64_t classes) { return int(kThreads / classes * classes); }

// Runs pass 1 for one activation and class count. With workspace == nullptr only sets
// *workspace_bytes.
template <class T, class L, Activation kAct, int kClasses>
cudaError_t run_sums(const Problem& p, const T* y, const L* labels, Acc<T>* tp, Acc<T>* fp,
                     Acc<T>* fn, void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  using A = Acc<T>;
  Launch launch;
  cudaError_t err;
  if constexpr (kClasses > 0) {
    const int64_t packs = p.voxels / Pack<T, kClasses>::kVoxels + 2;
    err = plan(sums_binary<T, L, kAct, kClasses>, p, kThreads, packs, &launch);
  } else {
    const int threads = general_threads(p.classes);
    err = plan(sums_general<T, L, kAct>, p, threads, p.voxels * p.classes, &launch);
  }
  if (err != cudaSuccess) return err;
  const int64_t blocks = launch.grid.x;
  const size_t needed = size_t(p.batch * blocks * 3 * p.classes) * sizeof(A);
  if (workspace == nullptr) {
    *workspace_bytes = needed;
    return cudaSuccess;
  }
  if (*workspace_bytes < needed) return cudaErrorInvalidValue;
  A* partials = static_cast<A*>(workspace);
  const DeviceLabels<A, L> device = device_labels<A>(p, labels);
  if constexpr (kClasses > 0) {
    sums_binary<T, L, kAct, kClasses><<<launch.grid, launch.block, 0, stream>>>(p, y, device, partials);
  } else {
    sums_general<T, L, kAct><<<launch.grid, launch.block, 0, stream>>>(p, y, device, partials);
  }
  const int64_t outputs = p.batch * 3 * p.classes;
  finalize_sums<A><<<unsigned(std::min(outputs, kMaxGridX)), kThreads, 0, stream>>>(
      p.batch, p.classes, blocks, partials, tp, fp, fn);
  return cudaGetLastError();
}

template <class T, class L, Activation kAct, int kClasses>
cudaError_t run_grad(const Problem& p, const T* y, const L* labels, Upstream<Acc<T>> upstream,
                     T* grad_y_pred, cudaStream_t stream) {
  using A = Acc<T>;
  Launch launch;
  cudaError_t err;
  const DeviceLabels<A, L> device = device_labels<A>(p, labels);
  if constexpr (kClasses > 0) {
    const int64_t packs = p.voxels / Pack<T, kClasses>::kVoxels + 2;
    err = plan(grad_binary<T, L, kAct, kClasses>, p, kThreads, packs, &launch);
    if (err != cudaSuccess) return err;
    grad_binary<T, L, kAct, kClasses><<<launch.grid, launch.block, 0, stream>>>(
        p, y, device, upstream, grad_y_pred);
  } else {
    const int threads = general_threads(p.classes);
    err = plan(grad_general<T, L, kAct>, p, threads, p.voxels * p.classes, &launch);
    if (err != cudaSuccess) return err;
    grad_general<T, L, kAct><<<launch.grid, launch.block, 0, stream>>>(
        p, y, device, upstream, grad_y_pred);
  }
  return cudaGetLastError();
}

// The two entry points, for dispatch (tversky_dispatch.h).
template <class T, class L>
struct SumsOp {
  template <Activation kAct, int kClasses, class... Args>
  static cudaError_t run(const Problem& problem, Args... args) {
    return run_sums<T, L, kAct, kClasses>(problem, args...);
  }
};

template <class T, class L>
struct GradOp {
  template <Activation kAct, int kClasses, class... Args>
  static cudaError_t run(const Problem& problem, Args... args) {
    return run_grad<T, L, kAct, kClasses>(problem, args...);
  }
};

inline const char* message(cudaError_t err) {
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda_impl

template <class T, class L>
size_t sums_cuda_workspace_bytes(const Problem& problem) {
  size_t bytes = 0;
  if (validate(problem) == nullptr && problem.batch > 0) {
    dispatch<cuda_impl::SumsOp<T, L>>(problem, static_cast<const T*>(nullptr),
                                      static_cast<const L*>(nullptr),
                                      static_cast<Acc<T>*>(nullptr),
                                      static_cast<Acc<T>*>(nullptr),
                                      static_cast<Acc<T>*>(nullptr),
                                      static_cast<void*>(nullptr), &bytes, cudaStream_t(nullptr));
  }
  return bytes;
}

template <class T, class L>
const char* sums_cuda(const Problem& problem, const T* y_pred, const L* labels, Acc<T>* tp,
                      Acc<T>* fp, Acc<T>* fn, void* workspace, size_t workspace_bytes,
                      void* stream) {
  if (const char* invalid = validate(problem)) return invalid;
  if (problem.batch == 0) return nullptr;
  if (workspace == nullptr) return "sums_cuda: no workspace (see sums_cuda_workspace_bytes)";
  const cudaError_t err = dispatch<cuda_impl::SumsOp<T, L>>(
      problem, y_pred, labels, tp, fp, fn, workspace, &workspace_bytes,
      static_cast<cudaStream_t>(stream));
  if (err == cudaErrorInvalidValue) return "sums_cuda: workspace smaller than required";
  return cuda_impl::message(err);
}

template <class T, class L>
const char* sums_grad_cuda(const Problem& problem, const T* y_pred, const L* labels,
                           const Acc<T>* grad_tp, const Acc<T>* grad_fp, const Acc<T>* grad_fn,
                           T* grad_y_pred, void* stream) {
  if (const char* invalid = validate(problem)) return invalid;
  if (problem.batch == 0 || problem.voxels == 0) return nullptr;
  const cuda_impl::Upstream<Acc<T>> upstream{grad_tp, grad_fp, grad_fn};
  return cuda_impl::message(dispatch<cuda_impl::GradOp<T, L>>(
      problem, y_pred, labels, upstream, grad_y_pred, static_cast<cudaStream_t>(stream)));
}

#define TFVERSKY_INSTANTIATE_CUDA(T, L)                                                      \
  template size_t sums_cuda_workspace_bytes<T, L>(const Problem&);                         \
  template const char* sums_cuda<T, L>(const Problem&, const T*, const L*, Acc<T>*, Acc<T>*, \
                                       Acc<T>*, void*, size_t, void*);                       \
  template const char* sums_grad_cuda<T, L>(const Problem&, const T*, const L*,              \
                                            const Acc<T>*, const Acc<T>*, const Acc<T>*, T*, \
                                            void*);

#define TFVERSKY_INSTANTIATE_CUDA_ALL_LABELS(T) \
  TFVERSKY_INSTANTIATE_CUDA(T, uint8_t)         \
  TFVERSKY_INSTANTIATE_CUDA(T, int32_t)         \
  TFVERSKY_INSTANTIATE_CUDA(T, int64_t)         \
  TFVERSKY_INSTANTIATE_CUDA(T, Acc<T>)

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_KERNELS_TVERSKY_CUDA_IMPL_CUH_
