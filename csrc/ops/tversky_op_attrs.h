// What the TensorFlow kernels of the fused ops (tversky_kernels.cc) and their XLA lowering
// (csrc/xla/tversky_xla_ops.cc) read the same way: the attributes, and the problem's sizes
// from the input shapes, checked (the upstream gradients' too).
#ifndef TFVERSKY_CSRC_OPS_TVERSKY_OP_ATTRS_H_
#define TFVERSKY_CSRC_OPS_TVERSKY_OP_ATTRS_H_

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tversky_kernels.h"

namespace tfversky {

// The attributes shared by both ops, into the problem's activation and ignore_index fields.
inline absl::Status ReadAttrs(tensorflow::OpKernelConstruction* ctx, Problem* p) {
  bool from_logits = false;
  std::string activation;
  TF_RETURN_IF_ERROR(ctx->GetAttr("from_logits", &from_logits));
  TF_RETURN_IF_ERROR(ctx->GetAttr("activation", &activation));
  TF_RETURN_IF_ERROR(ctx->GetAttr("has_ignore_index", &p->has_ignore_index));
  TF_RETURN_IF_ERROR(ctx->GetAttr("ignore_index", &p->ignore_index));
  p->activation = !from_logits              ? Activation::kNone
                  : activation == "softmax" ? Activation::kSoftmax
                                            : Activation::kSigmoid;
  return absl::OkStatus();
}

// The problem's sizes, from the shapes of y_pred and the labels (class ids if `sparse`),
// checked: at run time for the TF kernels (the shape functions only see what is static), at
// compile time for XLA.
inline absl::Status SetSizes(const char* op, const tensorflow::TensorShape& y,
                             const tensorflow::TensorShape& labels, bool sparse, Problem* p) {
  if (y.dims() < 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": y_pred must have shape (batch, *spatial, classes) with at least one spatial dim. "
            "Received shape ",
        y.DebugString()));
  }
  tensorflow::TensorShape expected = y;
  if (sparse) expected.RemoveLastDims(1);
  if (labels != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": labels shape ", labels.DebugString(), " does not match y_pred shape ",
        y.DebugString(), ". Expected ", expected.DebugString(),
        sparse ? " (class ids: y_pred's shape without the class dim)." : " (one-hot/soft)."));
  }
  p->batch = y.dim_size(0);
  p->classes = y.dim_size(y.dims() - 1);
  p->voxels = p->batch == 0 ? 0 : y.num_elements() / (p->batch * std::max<int64_t>(p->classes, 1));
  if (const char* invalid = validate(*p)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", invalid, ". Received y_pred shape ", y.DebugString(), ".",
        p->classes > kMaxClasses ? " Use implementation='tf' for more classes." : ""));
  }
  return absl::OkStatus();
}

// The gradient op's upstream input `input` (dL/dTP, dL/dFP or dL/dFN) must be (batch, classes).
inline absl::Status CheckUpstream(const char* op, const tensorflow::TensorShape& upstream,
                                  int input, const Problem& p) {
  const tensorflow::TensorShape sums({p.batch, p.classes});
  if (upstream == sums) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": the upstream gradients must have shape (batch, classes) = ", sums.DebugString(),
      ". Received ", upstream.DebugString(), " for input ", input));
}

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_OPS_TVERSKY_OP_ATTRS_H_
