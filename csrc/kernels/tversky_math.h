// Per-voxel math of the fused Tversky sums, shared by the CPU and the CUDA kernels.
//
// Everything here is a small inline function on scalars: the CPU kernels call it inside
// loops over 16 voxels that the compiler vectorises, the CUDA kernels once per thread.
// No framework headers, so the same code builds into the TensorFlow op and the pybind11
// module, with g++ and with nvcc.
//
// Notation (docs/losses.md, "The math"): per sample b, class c, voxel i, with p the probability,
// g the target and w = 0 for ignored voxels (1 otherwise):
//   TP_c = sum_i w p g,   FP_c = sum_i w p (1 - g),   FN_c = sum_i w (1 - p) g.
// The backward pass gets dL/dTP_c, dL/dFP_c, dL/dFN_c and computes per voxel
//   G_c = w (dFP_c + g (dTP_c - dFP_c - dFN_c))              (= dL/dp_c)
// then chains through the activation:
//   softmax: dz_c = p_c (G_c - sum_k p_k G_k)   (two classes: dz_1 = -dz_0 = p_0 p_1 (G_1 - G_0))
//   sigmoid: dz_c = G_c p_c (1 - p_c)
//   none (probabilities in): G_c itself.
#ifndef TFVERSKY_CSRC_KERNELS_TVERSKY_MATH_H_
#define TFVERSKY_CSRC_KERNELS_TVERSKY_MATH_H_

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define TFV_HD __host__ __device__ __forceinline__
#else
#define TFV_HD inline
#endif

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

namespace tfversky {

// Largest class count the kernels take (the CPU kernels keep per-class lane accumulators
// on the stack). More classes fall back to the pure TensorFlow path.
constexpr int kMaxClasses = 64;

// What sits between y_pred and the probabilities.
enum class Activation : int32_t {
  kNone = 0,     // y_pred already holds probabilities
  kSoftmax = 1,  // softmax over the channel axis of logits
  kSigmoid = 2,  // sigmoid of every logit
};

// 16-bit float storage, bit-compatible with Eigen::half / numpy float16 and with
// Eigen::bfloat16 / ml_dtypes.bfloat16. Arithmetic always happens in float.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// Accumulation and arithmetic type: float, except float64 inputs stay in double.
template <class T>
struct AccumulatorOf {
  using type = float;
};
template <>
struct AccumulatorOf<double> {
  using type = double;
};
template <class T>
using Acc = typename AccumulatorOf<T>::type;

// Integer labels are class ids (sparse); float labels are one-hot or soft targets (dense).
template <class L>
constexpr bool kSparseLabels = std::is_integral<L>::value;

TFV_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

TFV_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

template <class A>
TFV_HD A quiet_nan();

template <>
TFV_HD float quiet_nan<float>() {
  return bits_float(0x7fc00000u);
}

template <>
TFV_HD double quiet_nan<double>() {
  const uint64_t bits = 0x7ff8000000000000ull;
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double d;
  std::memcpy(&d, &bits, sizeof(d));
  return d;
#endif
}

// ---- 16-bit conversions, branch-free so that loops over them vectorise ----

TFV_HD float to_acc(float x) { return x; }
TFV_HD double to_acc(double x) { return x; }

TFV_HD float to_acc(BFloat16 x) { return bits_float(uint32_t(x.bits) << 16); }

TFV_HD float to_acc(Half x) {
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exponent = h & 0x7c00u;
  const uint32_t mantissa = h & 0x03ffu;
  // Normal numbers: move exponent and mantissa into place and rebias (127 - 15 = 112).
  const float normal = bits_float(((h & 0x7fffu) << 13) + (112u << 23));
  // Zero and subnormals: mantissa * 2^-24, exact, and immune to denormals-are-zero modes.
  const float small = float(mantissa) * 5.9604644775390625e-8f;
  // Inf and NaN keep their mantissa (NaN payloads stay NaN).
  const float special = bits_float(0x7f800000u | (mantissa << 13));
  const float magnitude = exponent == 0 ? small : (exponent == 0x7c00u ? special : normal);
  return bits_float(float_bits(magnitude) | sign);
}

template <class T>
TFV_HD T from_acc(float x);

template <>
TFV_HD float from_acc<float>(float x) {
  return x;
}

template <class T>
TFV_HD T from_acc(double x);

template <>
TFV_HD double from_acc<double>(double x) {
  return x;
}

// Round to nearest even; NaN stays a (quiet) NaN.
template <>
TFV_HD BFloat16 from_acc<BFloat16>(float x) {
  const uint32_t u = float_bits(x);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded)};
}

// Round to nearest even, overflow to Inf, NaN to a quiet NaN, subnormals exact.
template <>
TFV_HD Half from_acc<Half>(float x) {
  uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  const float magnitude = bits_float(u);
  // Below 2^-14 the result is a half subnormal: adding 0.5 (whose ulp is 2^-24, the half
  // subnormal step) makes the float adder round the value to that grid.
  const uint32_t subnormal = float_bits(magnitude + 0.5f) - float_bits(0.5f);
  // Normal: rebias the exponent (-112 << 23) and round on the 13 dropped mantissa bits.
  const uint32_t normal = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
  uint32_t h = u < 0x38800000u ? subnormal : normal;
  h = u >= 0x477ff000u ? 0x7c00u : h;  // rounds to 65536 or more: Inf
  h = u > 0x7f800000u ? 0x7e00u : h;   // NaN
  return Half{static_cast<uint16_t>(h | sign)};
}

// ---- exp, sigmoid ----

// exp(x) in float, vectorisable (no libm call, no branches) and without -ffast-math.
// exp(x) = 2^k exp(r) with k = round(x / ln 2) and |r| <= ln(2) / 2; exp(r) from its Taylor
// series to degree 7 (truncation error below 6e-9 relative). Inputs are clamped to
// [-87, 88] so 2^k stays a normal float; NaN propagates. Max error about 2 ulp.
TFV_HD float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // comparisons with NaN are false: NaN passes through
  x = x > 88.0f ? 88.0f : x;
  const float kShift = 12582912.0f;  // 1.5 * 2^23: the sum's low mantissa bits hold round(.)
  const float shifted = x * 1.44269504088896341f + kShift;
  const float k = shifted - kShift;
  const int32_t k_int = int32_t(float_bits(shifted)) - int32_t(float_bits(kShift));
  // ln 2 = 0.693359375 - 2.12194440e-4; the first part times |k| <= 128 is exact.
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.98412698e-4f;  // 1/7!
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_float(uint32_t(k_int + 127) << 23);
}

TFV_HD double exp_approx(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// p = sigmoid(z) and q = 1 - p = sigmoid(-z), both to full relative precision (q is not
// computed as 1 - p, which would lose it when p is close to 1). One exp.
template <class A>
TFV_HD void sigmoid_pair(A z, A& p, A& q) {
  const A e = exp_approx(z < A(0) ? z : -z);  // exp(-|z|) in (0, 1]; NaN stays NaN
  const A big = A(1) / (A(1) + e);
  const A small = e * big;
  const bool positive = z >= A(0);
  p = positive ? big : small;
  q = positive ? small : big;
}

// ---- labels ----

// Number of valid sparse label values: [0, n). A single channel is a binary (sigmoid) map.
TFV_HD int64_t num_label_values(int64_t classes) { return classes == 1 ? 2 : classes; }

// How sparse labels of type L map to weights and targets. All comparisons happen in L
// (class ids < kMaxClasses fit any label type), so vectorised code stays as narrow as L.
template <class L>
struct SparseLabelRule {
  int64_t classes;
  L num_values;     // valid ids are [0, num_values)
  bool ignore;      // whether ignore_value is in use (and representable in L)
  L ignore_value;

  // Bitwise & and |, not && and ||: no branches in the vectorised loops.
  TFV_HD bool ignored(L label) const { return ignore & (label == ignore_value); }

  // Out of range and not ignored: an error.
  TFV_HD bool bad(L label) const {
    bool negative = false;
    if constexpr (std::is_signed<L>::value) negative = label < L(0);
    return (!ignored(label)) & (negative | (label >= num_values));
  }

  // w: 0 for ignored voxels, 1 otherwise.
  template <class A>
  TFV_HD A weight(L label) const {
    return ignored(label) ? A(0) : A(1);
  }

  // Target of channel c: one-hot, or the label itself for a single channel.
  template <class A>
  TFV_HD A target(L label, int64_t c) const {
    return label == L(classes == 1 ? 1 : c) ? A(1) : A(0);
  }
};

template <class L>
SparseLabelRule<L> make_label_rule(int64_t classes, bool has_ignore_index, int64_t ignore_index) {
  // An ignore_index that L cannot hold never matches a label.
  const bool representable = ignore_index >= int64_t(std::numeric_limits<L>::min()) &&
                             ignore_index <= int64_t(std::numeric_limits<L>::max());
  const bool ignore = has_ignore_index && representable;
  return {classes, L(num_label_values(classes)), ignore, ignore ? L(ignore_index) : L(0)};
}

// ---- probabilities and the chain rule ----

// Probabilities p and complements q = 1 - p of a voxel with one or two channels (z1 is
// unused for one channel). Two-class softmax needs one exp: p1 = sigmoid(z1 - z0).
template <class A>
struct VoxelProbabilities {
  A p0, q0, p1, q1;
};

template <Activation kAct, int kClasses, class A>
TFV_HD VoxelProbabilities<A> binary_probabilities(A z0, A z1) {
  VoxelProbabilities<A> v{A(0), A(1), A(0), A(1)};
  if constexpr (kAct == Activation::kSoftmax) {
    // As softmax(z) = exp(z - max z) / sum: NaN when the larger logit is infinite (+inf
    // gives inf - inf), finite when only the smaller one is -inf.
    const A peak = z0 > z1 ? z0 : z1;
    sigmoid_pair<A>(z1 - z0 + (peak - peak), v.p1, v.p0);
    v.q0 = v.p1;
    v.q1 = v.p0;
  } else if constexpr (kAct == Activation::kSigmoid) {
    sigmoid_pair<A>(z0, v.p0, v.q0);
    if constexpr (kClasses == 2) sigmoid_pair<A>(z1, v.p1, v.q1);
  } else {
    v.p0 = z0;
    v.q0 = A(1) - z0;
    v.p1 = z1;
    v.q1 = A(1) - z1;
  }
  return v;
}

// Per-class factors of dL/dp_c = w (fp_weight + g * target_weight): see the file comment.
template <class A>
struct GradFactors {
  A fp_weight;      // dL/dFP_c
  A target_weight;  // dL/dTP_c - dL/dFP_c - dL/dFN_c
};

template <class A>
TFV_HD GradFactors<A> grad_factors(A d_tp, A d_fp, A d_fn) {
  return GradFactors<A>{d_fp, d_tp - d_fp - d_fn};
}

template <class A>
TFV_HD A grad_wrt_probability(const GradFactors<A>& f, A w, A g) {
  return w * (f.fp_weight + g * f.target_weight);
}

// Element-wise activations (sigmoid, none): dL/dz from dL/dp. Softmax couples the
// channels: dz_c = p_c (G_c - sum_k p_k G_k), two classes: dz_1 = -dz_0 = p0 p1 (G_1 - G_0).
template <Activation kAct, class A>
TFV_HD A elementwise_chain_rule(A grad, A p, A q) {
  return kAct == Activation::kSigmoid ? grad * p * q : grad;
}

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_KERNELS_TVERSKY_MATH_H_
