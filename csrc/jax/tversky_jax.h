// What the CPU and CUDA XLA FFI handlers of the JAX binding share: the attributes, the call
// (element types and problem) read from the buffers, and the checks, all with the TensorFlow
// op's messages (csrc/kernels/problem.cc). No math here: the handlers call the kernels.
//
// Buffers, as tfversky/_fused_jax.py passes them:
//   sums: y_pred (..., *spatial, C), labels (..., *spatial) class ids or (..., *spatial, C)
//         targets -> tp, fp, fn (..., C);
//   grad: the same two, then dL/dTP, dL/dFP, dL/dFN (..., C) -> dL/dy_pred (like y_pred).
// "..." is the batch, and under jax.vmap (vmap_method="broadcast_all") the mapped axes in
// front of it: the handlers fold all of them into one batch, `spatial_rank` telling where
// the spatial dims begin.
#ifndef TFVERSKY_CSRC_JAX_TVERSKY_JAX_H_
#define TFVERSKY_CSRC_JAX_TVERSKY_JAX_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tversky_kernels.h"
#include "tversky_xla_call.h"  // Call, Elem, Labels, WithTypes: shared with the TF lowering
#include "xla/ffi/api/ffi.h"

namespace tfversky {
namespace jax_ffi {

namespace ffi = xla::ffi;
using xla_call::Call;
using xla_call::Elem;
using xla_call::Labels;

constexpr char kSumsOp[] = "FusedTverskySums";
constexpr char kGradOp[] = "FusedTverskySumsGrad";

struct Attrs {
  int32_t activation;  // Activation: 0 probabilities, 1 softmax, 2 sigmoid of logits
  bool has_ignore_index;
  int64_t ignore_index;
  int64_t spatial_rank;  // number of spatial dims
};

inline ffi::Error ErrorOf(const std::string& message) {
  return message.empty() ? ffi::Error::Success()
                         : ffi::Error(ffi::ErrorCode::kInvalidArgument, message);
}

// dims with everything before the last `trailing` dims folded into one (the batch).
inline std::vector<int64_t> FoldBatch(ffi::Span<const int64_t> dims, int64_t trailing) {
  const int64_t rank = int64_t(dims.size());
  if (rank < trailing + 1) return std::vector<int64_t>(dims.begin(), dims.end());
  int64_t batch = 1;
  for (int64_t i = 0; i < rank - trailing; ++i) batch *= dims[i];
  std::vector<int64_t> folded = {batch};
  folded.insert(folded.end(), dims.end() - trailing, dims.end());
  return folded;
}

// The element types and the problem of a call, checked; "" or the message.
inline std::string MakeCall(const char* op, const ffi::AnyBuffer& y, const ffi::AnyBuffer& labels,
                            const Attrs& attrs, Call* c) {
  using ffi::DataType;
  const std::string prefix = std::string(op) + ": ";
  switch (y.element_type()) {
    case DataType::F16: c->elem = Elem::kHalf; break;
    case DataType::BF16: c->elem = Elem::kBFloat16; break;
    case DataType::F32: c->elem = Elem::kFloat; break;
    case DataType::F64: c->elem = Elem::kDouble; break;
    default:
      return prefix + "y_pred must be float16, bfloat16, float32 or float64";
  }
  const DataType sum_type = c->elem == Elem::kDouble ? DataType::F64 : DataType::F32;
  const DataType label_type = labels.element_type();
  if (label_type == DataType::U8) {
    c->labels = Labels::kUint8;
  } else if (label_type == DataType::S32) {
    c->labels = Labels::kInt32;
  } else if (label_type == DataType::S64) {
    c->labels = Labels::kInt64;
  } else if (label_type == sum_type) {
    c->labels = Labels::kDense;
  } else {
    return prefix + "labels must be uint8, int32 or int64 class ids, or one-hot/soft targets "
                    "of the sums' type (" + (sum_type == DataType::F64 ? "float64" : "float32") +
           " for this y_pred)";
  }
  if (attrs.activation < 0 || attrs.activation > 2) return prefix + "unknown activation";
  Problem& p = c->problem;
  p.activation = Activation(attrs.activation);
  p.has_ignore_index = attrs.has_ignore_index;
  p.ignore_index = attrs.ignore_index;
  const bool sparse = c->labels != Labels::kDense;
  return set_sizes(op, FoldBatch(y.dimensions(), attrs.spatial_rank + 1),
                   FoldBatch(labels.dimensions(), attrs.spatial_rank + (sparse ? 0 : 1)), sparse,
                   &p);
}

// The three upstream gradients of the gradient call must be (batch, classes).
inline std::string CheckUpstreams(const ffi::AnyBuffer* upstream[3], const Call& c) {
  const ffi::DataType sum_type =
      c.elem == Elem::kDouble ? ffi::DataType::F64 : ffi::DataType::F32;
  for (int i = 0; i < 3; ++i) {
    if (upstream[i]->element_type() != sum_type) {
      return std::string(kGradOp) + ": the upstream gradients must have the sums' type";
    }
    const std::string message =
        check_upstream(kGradOp, FoldBatch(upstream[i]->dimensions(), 1), i + 2, c.problem);
    if (!message.empty()) return message;
  }
  return "";
}

// A handler binding with the attributes of Attrs appended, in their order.
template <class Binding>
auto WithAttrs(Binding&& binding) {
  return std::move(binding)
      .template Attr<int32_t>("activation")
      .template Attr<bool>("has_ignore_index")
      .template Attr<int64_t>("ignore_index")
      .template Attr<int64_t>("spatial_rank");
}

}  // namespace jax_ffi
}  // namespace tfversky

#endif  // TFVERSKY_CSRC_JAX_TVERSKY_JAX_H_
