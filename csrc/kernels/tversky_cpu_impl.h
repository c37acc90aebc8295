// CPU kernels of the fused Tversky sums and their gradient: the implementation, included by
// tversky_cpu_<type>.cc, which instantiate it for one input type each (so that a parallel
// build compiles the four at once).
//
// Work is split into tasks of kCpuTaskVoxels voxels of one sample. Each task reduces its
// voxels with an `omp simd` reduction (vectorised, exp_approx included, without
// -ffast-math) and writes its own partial sums; the partials are added in task order at the
// end. Task boundaries and the order of every addition depend on the problem alone, so the
// results are bitwise identical for any number of threads.
//
// One and two classes (the binary cases) run one fused loop per task; more classes run a
// loop per class over chunks of kChunk voxels, after a pass for the softmax normalisers.
#ifndef TFVERSKY_CSRC_KERNELS_TVERSKY_CPU_IMPL_H_
#define TFVERSKY_CSRC_KERNELS_TVERSKY_CPU_IMPL_H_

#include <algorithm>
#include <vector>

#include "tversky_dispatch.h"
#include "tversky_kernels.h"

namespace tfversky {
namespace cpu_impl {

constexpr int64_t kChunk = 256;  // voxels per chunk of the many-class path (fits in L1/L2)

// Label access for the loops: a pointer plus the sparse rule, copied into a local so that
// the compiler sees no aliasing with the output stores. Dense labels: weight 1, target read.
template <class A, class L, bool kSparse = kSparseLabels<L>>
struct LabelReader {
  const L* labels;
  SparseLabelRule<L> rule;

  A weight(int64_t i) const { return rule.template weight<A>(labels[i]); }
  int bad(int64_t i) const { return int(rule.bad(labels[i])); }
  A target(int64_t i, int64_t c) const { return rule.template target<A>(labels[i], c); }
};

template <class A, class L>
struct LabelReader<A, L, false> {
  const L* labels;
  int64_t classes;

  A weight(int64_t) const { return A(1); }
  int bad(int64_t) const { return 0; }
  A target(int64_t i, int64_t c) const { return A(labels[i * classes + c]); }
};

// The kernel for one combination of input type T, label type L, activation and class
// count (kClasses = 1 or 2 known at compile time, 0 = any, read from the problem).
template <class T, class L, Activation kAct, int kClasses>
class CpuKernel {
  using A = Acc<T>;
  static constexpr bool kSparse = kSparseLabels<L>;

 public:
  explicit CpuKernel(const Problem& problem)
      : problem_(problem),
        classes_(kClasses > 0 ? kClasses : problem.classes),
        label_stride_(kSparse ? 1 : classes_),
        tasks_per_sample_((problem.voxels + kCpuTaskVoxels - 1) / kCpuTaskVoxels) {}

  LabelError sums(const T* y_pred, const L* labels, A* tp, A* fp, A* fn,
                  const ParallelFor* parallel_for) const {
    const int64_t tasks = problem_.batch * tasks_per_sample_;
    const int64_t stride = 3 * classes_;
    std::vector<A> partials(static_cast<size_t>(tasks * stride));
    std::vector<char> bad(static_cast<size_t>(tasks));
    (*parallel_for)(tasks, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const Task t = task_of(task, y_pred, labels);
        A* partial = partials.data() + task * stride;
        if constexpr (kClasses > 0) {
          bad[task] = sums_binary(t, partial);
        } else {
          bad[task] = sums_general(t, partial);
        }
      }
    });
    A* outputs[3] = {tp, fp, fn};
    for (int64_t b = 0; b < problem_.batch; ++b) {
      for (int k = 0; k < 3; ++k) {
        for (int64_t c = 0; c < classes_; ++c) {
          double total = 0.0;  // tasks in order: the same sum for any thread count
          for (int64_t t = b * tasks_per_sample_; t < (b + 1) * tasks_per_sample_; ++t) {
            total += double(partials[t * stride + k * classes_ + c]);
          }
          outputs[k][b * classes_ + c] = A(total);
        }
      }
    }
    return first_error(bad, y_pred, labels);
  }

  LabelError grad(const T* y_pred, const L* labels, const A* grad_tp, const A* grad_fp,
                  const A* grad_fn, T* grad_y_pred, const ParallelFor* parallel_for) const {
    const int64_t tasks = problem_.batch * tasks_per_sample_;
    std::vector<GradFactors<A>> factors(static_cast<size_t>(problem_.batch * classes_));
    for (int64_t i = 0; i < problem_.batch * classes_; ++i) {
      factors[i] = grad_factors<A>(grad_tp[i], grad_fp[i], grad_fn[i]);
    }
    std::vector<char> bad(static_cast<size_t>(tasks));
    (*parallel_for)(tasks, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const Task t = task_of(task, y_pred, labels);
        const GradFactors<A>* f = factors.data() + t.sample * classes_;
        T* out = grad_y_pred + (t.y - y_pred);
        if constexpr (kClasses > 0) {
          bad[task] = grad_binary(t, f, out);
        } else {
          bad[task] = grad_general(t, f, out);
        }
      }
    });
    return first_error(bad, y_pred, labels);
  }

 private:
  // A task: `count` voxels of sample `sample` from voxel `first` on, at y and labels.
  struct Task {
    int64_t sample, first, count;
    const T* y;
    const L* labels;
  };

  Task task_of(int64_t task, const T* y_pred, const L* labels) const {
    const int64_t b = task / tasks_per_sample_;
    const int64_t first = (task % tasks_per_sample_) * kCpuTaskVoxels;
    const int64_t voxel = b * problem_.voxels + first;
    return {b, first, std::min(kCpuTaskVoxels, problem_.voxels - first),
            y_pred + voxel * classes_, labels + voxel * label_stride_};
  }

  LabelReader<A, L> reader(const L* labels) const {
    if constexpr (kSparse) {
      return {labels, make_label_rule<L>(problem_.classes, problem_.has_ignore_index,
                                         problem_.ignore_index)};
    } else {
      return {labels, classes_};
    }
  }

  static VoxelProbabilities<A> probabilities(const T* z) {
    return binary_probabilities<kAct, kClasses, A>(to_acc(z[0]),
                                                   kClasses == 2 ? to_acc(z[kClasses - 1]) : A(0));
  }

  // ---- one or two classes: one fused loop (plain scalars, which GCC's simd vectoriser
  // handles; small per-lane arrays it does not) ----

  bool sums_binary(const Task t, A* partial) const {
    const LabelReader<A, L> labels = reader(t.labels);
    const T* y = t.y;
    const int64_t n = t.count;
    A tp0 = 0, fp0 = 0, fn0 = 0, tp1 = 0, fp1 = 0, fn1 = 0;
    int bad = 0;
    if constexpr (kSparse) {
      // Class ids: every term is p, q or 0, so masked adds replace the products (same
      // values, same order). With two softmax classes p0 = q1 and p1 = q0, so FN0 = FP1
      // and FP0 = FN1: four sums suffice. The masks skip ignored voxels, where the products
      // w * p would add 0 * NaN = NaN for a NaN logit: `poison` (0, or NaN: p - p of every
      // voxel) keeps that, so a NaN anywhere in y_pred reaches the sums, as in the CUDA and
      // pure paths. (Unmasked: GCC 12 -march=native miscompiled `valid ? 0 : p - p` here.)
      const SparseLabelRule<L> rule = labels.rule;
      const L* ids = labels.labels;
      A poison = 0;
#pragma omp simd reduction(+ : tp0, fp0, fn0, tp1, fp1, fn1, poison) reduction(| : bad)
      for (int64_t i = 0; i < n; ++i) {
        const VoxelProbabilities<A> v = probabilities(y + i * kClasses);
        const L id = ids[i];
        const bool valid = !rule.ignored(id);
        bad |= int(rule.bad(id));
        poison += (v.p0 - v.p0) + (v.p1 - v.p1);
        if constexpr (kClasses == 1) {
          const bool lesion = valid & (id == L(1)), background = valid & (id == L(0));
          tp0 += lesion ? v.p0 : A(0);
          fp0 += background ? v.p0 : A(0);
          fn0 += lesion ? v.q0 : A(0);
        } else {
          const bool is0 = valid & (id == L(0)), is1 = valid & (id == L(1));
          tp0 += is0 ? v.p0 : A(0);
          fp1 += is0 ? v.p1 : A(0);
          tp1 += is1 ? v.p1 : A(0);
          fn1 += is1 ? v.q1 : A(0);
          if constexpr (kAct != Activation::kSoftmax) {
            fp0 += is1 ? v.p0 : A(0);
            fn0 += is0 ? v.q0 : A(0);
          }
        }
      }
      if constexpr (kClasses == 2 && kAct == Activation::kSoftmax) {
        fp0 = fn1;
        fn0 = fp1;
      }
      tp0 += poison, fp0 += poison, fn0 += poison;
      tp1 += poison, fp1 += poison, fn1 += poison;
    } else {
#pragma omp simd reduction(+ : tp0, fp0, fn0, tp1, fp1, fn1)
      for (int64_t i = 0; i < n; ++i) {
        const VoxelProbabilities<A> v = probabilities(y + i * kClasses);
        const A g0 = labels.target(i, 0);
        tp0 += v.p0 * g0;
        fp0 += v.p0 * (A(1) - g0);
        fn0 += v.q0 * g0;
        if constexpr (kClasses == 2) {
          const A g1 = labels.target(i, 1);
          tp1 += v.p1 * g1;
          fp1 += v.p1 * (A(1) - g1);
          fn1 += v.q1 * g1;
        }
      }
    }
    const A values[2][3] = {{tp0, fp0, fn0}, {tp1, fp1, fn1}};
    for (int k = 0; k < 3; ++k) {
      for (int c = 0; c < kClasses; ++c) partial[k * kClasses + c] = values[c][k];
    }
    return bad != 0;
  }

  bool grad_binary(const Task t, const GradFactors<A>* f, T* out) const {
    const LabelReader<A, L> labels = reader(t.labels);
    const T* y = t.y;
    const int64_t n = t.count;
    const GradFactors<A> f0 = f[0], f1 = f[kClasses - 1];
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < n; ++i) {
      const VoxelProbabilities<A> v = probabilities(y + i * kClasses);
      bad |= labels.bad(i);
      const A w = labels.weight(i);
      const A grad0 = grad_wrt_probability(f0, w, labels.target(i, 0));  // dL/dp0
      if constexpr (kClasses == 1) {
        out[i] = from_acc<T>(elementwise_chain_rule<kAct>(grad0, v.p0, v.q0));
      } else {
        const A grad1 = grad_wrt_probability(f1, w, labels.target(i, 1));
        if constexpr (kAct == Activation::kSoftmax) {
          const A dz1 = v.p0 * v.p1 * (grad1 - grad0);
          out[2 * i] = from_acc<T>(-dz1);
          out[2 * i + 1] = from_acc<T>(dz1);
        } else {
          out[2 * i] = from_acc<T>(elementwise_chain_rule<kAct>(grad0, v.p0, v.q0));
          out[2 * i + 1] = from_acc<T>(elementwise_chain_rule<kAct>(grad1, v.p1, v.q1));
        }
      }
    }
    return bad != 0;
  }

  // ---- any number of classes: per-class loops over chunks ----

  // Softmax: per voxel of a chunk, the largest logit and 1 / sum_c exp(z_c - largest).
  static void normalisers(const T* y, int64_t n, int64_t classes, A* peak, A* inverse) {
    for (int64_t i = 0; i < n; ++i) peak[i] = to_acc(y[i * classes]);
    for (int64_t c = 1; c < classes; ++c) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const A z = to_acc(y[i * classes + c]);
        peak[i] = z > peak[i] ? z : peak[i];
      }
    }
    for (int64_t i = 0; i < n; ++i) inverse[i] = A(0);
    for (int64_t c = 0; c < classes; ++c) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        inverse[i] += exp_approx(to_acc(y[i * classes + c]) - peak[i]);
      }
    }
    for (int64_t i = 0; i < n; ++i) inverse[i] = A(1) / inverse[i];
  }

  // p and q = 1 - p of one class at voxel i of a chunk, from its logit or probability z.
  static void class_probability(A z, const A* peak, const A* inverse, int64_t i, A& p, A& q) {
    if constexpr (kAct == Activation::kSoftmax) {
      p = exp_approx(z - peak[i]) * inverse[i];
      q = A(1) - p;
    } else if constexpr (kAct == Activation::kSigmoid) {
      sigmoid_pair<A>(z, p, q);
    } else {
      p = z;
      q = A(1) - p;
    }
  }

  bool sums_general(const Task t, A* partial) const {
    const int64_t classes = classes_;
    A totals[3][kMaxClasses] = {};
    A peak[kChunk], inverse[kChunk], w[kChunk];
    int bad = 0;
    for (int64_t start = 0; start < t.count; start += kChunk) {
      const int64_t n = std::min(kChunk, t.count - start);
      const T* y = t.y + start * classes;
      const LabelReader<A, L> labels = reader(t.labels + start * label_stride_);
      for (int64_t i = 0; i < n; ++i) {
        w[i] = labels.weight(i);
        bad |= labels.bad(i);
      }
      if constexpr (kAct == Activation::kSoftmax) normalisers(y, n, classes, peak, inverse);
      for (int64_t c = 0; c < classes; ++c) {
        A tp = 0, fp = 0, fn = 0;
#pragma omp simd reduction(+ : tp, fp, fn)
        for (int64_t i = 0; i < n; ++i) {
          A p, q;
          class_probability(to_acc(y[i * classes + c]), peak, inverse, i, p, q);
          const A g = labels.target(i, c);
          tp += w[i] * p * g;
          fp += w[i] * p * (A(1) - g);
          fn += w[i] * q * g;
        }
        totals[0][c] += tp;
        totals[1][c] += fp;
        totals[2][c] += fn;
      }
    }
    for (int k = 0; k < 3; ++k) {
      for (int64_t c = 0; c < classes; ++c) partial[k * classes + c] = totals[k][c];
    }
    return bad != 0;
  }

  bool grad_general(const Task t, const GradFactors<A>* f, T* out) const {
    const int64_t classes = classes_;
    A peak[kChunk], inverse[kChunk], w[kChunk], dot[kChunk];
    int bad = 0;
    for (int64_t start = 0; start < t.count; start += kChunk) {
      const int64_t n = std::min(kChunk, t.count - start);
      const T* y = t.y + start * classes;
      const LabelReader<A, L> labels = reader(t.labels + start * label_stride_);
      T* o = out + start * classes;
      for (int64_t i = 0; i < n; ++i) {
        w[i] = labels.weight(i);
        bad |= labels.bad(i);
      }
      if constexpr (kAct == Activation::kSoftmax) {
        normalisers(y, n, classes, peak, inverse);
        for (int64_t i = 0; i < n; ++i) dot[i] = A(0);
        for (int64_t c = 0; c < classes; ++c) {  // dot = sum_c p_c dL/dp_c
          const GradFactors<A> fc = f[c];
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) {
            A p, q;
            class_probability(to_acc(y[i * classes + c]), peak, inverse, i, p, q);
            dot[i] += p * grad_wrt_probability(fc, w[i], labels.target(i, c));
          }
        }
      }
      for (int64_t c = 0; c < classes; ++c) {
        const GradFactors<A> fc = f[c];
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          A p, q;
          class_probability(to_acc(y[i * classes + c]), peak, inverse, i, p, q);
          const A grad = grad_wrt_probability(fc, w[i], labels.target(i, c));
          const A dz = kAct == Activation::kSoftmax ? p * (grad - dot[i])
                                                    : elementwise_chain_rule<kAct>(grad, p, q);
          o[i * classes + c] = from_acc<T>(dz);
        }
      }
    }
    return bad != 0;
  }

  // The first out-of-range label in flat order, scanning only the tasks that reported one.
  LabelError first_error(const std::vector<char>& bad, const T* y_pred, const L* labels) const {
    LabelError error;
    for (size_t task = 0; task < bad.size() && !error.found; ++task) {
      if (!bad[task]) continue;
      const Task t = task_of(int64_t(task), y_pred, labels);
      const LabelReader<A, L> labels_t = reader(t.labels);
      for (int64_t i = 0; i < t.count; ++i) {
        if (labels_t.bad(i)) {
          error.found = true;
          error.index = t.sample * problem_.voxels + t.first + i;
          error.value = int64_t(t.labels[i]);
          break;
        }
      }
    }
    return error;
  }

  const Problem problem_;
  const int64_t classes_;
  const int64_t label_stride_;
  const int64_t tasks_per_sample_;
};

// The two entry points, for dispatch (tversky_dispatch.h).
template <class T, class L>
struct SumsOp {
  template <Activation kAct, int kClasses, class... Args>
  static LabelError run(const Problem& problem, Args... args) {
    return CpuKernel<T, L, kAct, kClasses>(problem).sums(args...);
  }
};

template <class T, class L>
struct GradOp {
  template <Activation kAct, int kClasses, class... Args>
  static LabelError run(const Problem& problem, Args... args) {
    return CpuKernel<T, L, kAct, kClasses>(problem).grad(args...);
  }
};

}  // namespace cpu_impl

template <class T, class L>
LabelError sums_cpu(const Problem& problem, const T* y_pred, const L* labels, Acc<T>* tp,
                    Acc<T>* fp, Acc<T>* fn, const ParallelFor& parallel_for) {
  return dispatch<cpu_impl::SumsOp<T, L>>(problem, y_pred, labels, tp, fp, fn, &parallel_for);
}

template <class T, class L>
LabelError sums_grad_cpu(const Problem& problem, const T* y_pred, const L* labels,
                         const Acc<T>* grad_tp, const Acc<T>* grad_fp, const Acc<T>* grad_fn,
                         T* grad_y_pred, const ParallelFor& parallel_for) {
  return dispatch<cpu_impl::GradOp<T, L>>(problem, y_pred, labels, grad_tp, grad_fp, grad_fn,
                                          grad_y_pred, &parallel_for);
}

#define TFVERSKY_INSTANTIATE_CPU(T, L)                                                    \
  template LabelError sums_cpu<T, L>(const Problem&, const T*, const L*, Acc<T>*, Acc<T>*, \
                                     Acc<T>*, const ParallelFor&);                         \
  template LabelError sums_grad_cpu<T, L>(const Problem&, const T*, const L*,              \
                                          const Acc<T>*, const Acc<T>*, const Acc<T>*, T*, \
                                          const ParallelFor&);

// Every label type for input type T: the sparse ids, and dense targets in Acc<T>.
#define TFVERSKY_INSTANTIATE_CPU_ALL_LABELS(T) \
  TFVERSKY_INSTANTIATE_CPU(T, uint8_t)         \
  TFVERSKY_INSTANTIATE_CPU(T, int32_t)         \
  TFVERSKY_INSTANTIATE_CPU(T, int64_t)         \
  TFVERSKY_INSTANTIATE_CPU(T, Acc<T>)

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_KERNELS_TVERSKY_CPU_IMPL_H_
