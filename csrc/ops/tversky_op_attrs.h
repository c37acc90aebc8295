// What the TensorFlow kernels of the fused ops (tversky_kernels.cc) and their XLA lowering
// (csrc/xla/tversky_xla_ops.cc) read the same way: the attributes, and the problem's sizes
// from the input shapes, checked (the upstream gradients' too).
#ifndef TFVERSKY_CSRC_OPS_TVERSKY_OP_ATTRS_H_
#define TFVERSKY_CSRC_OPS_TVERSKY_OP_ATTRS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
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

inline std::vector<int64_t> Dims(const tensorflow::TensorShape& shape) {
  std::vector<int64_t> dims;
  for (int i = 0; i < shape.dims(); ++i) dims.push_back(shape.dim_size(i));
  return dims;
}

inline absl::Status StatusOf(const std::string& message) {
  return message.empty() ? absl::OkStatus() : absl::InvalidArgumentError(message);
}

// The problem's sizes, from the shapes of y_pred and the labels (class ids if `sparse`),
// checked (csrc/kernels/problem.cc): at run time for the TF kernels (the shape functions
// only see what is static), at compile time for XLA.
inline absl::Status SetSizes(const char* op, const tensorflow::TensorShape& y,
                             const tensorflow::TensorShape& labels, bool sparse, Problem* p) {
  return StatusOf(set_sizes(op, Dims(y), Dims(labels), sparse, p));
}

// The gradient op's upstream input `input` (dL/dTP, dL/dFP or dL/dFN) must be (batch, classes).
inline absl::Status CheckUpstream(const char* op, const tensorflow::TensorShape& upstream,
                                  int input, const Problem& p) {
  return StatusOf(check_upstream(op, Dims(upstream), input, p));
}

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_OPS_TVERSKY_OP_ATTRS_H_
