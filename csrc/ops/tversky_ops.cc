// Op definitions and shape functions of the fused Tversky sums and their gradient.
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/types.h"

namespace tfversky {
namespace {

using ::tensorflow::DataType;
using ::tensorflow::DataTypeString;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

bool IsIntegral(DataType t) {
  return t == tensorflow::DT_UINT8 || t == tensorflow::DT_INT32 || t == tensorflow::DT_INT64;
}

// Tsum must be the accumulation type of T, and dense (float) labels must be Tsum.
absl::Status CheckTypes(InferenceContext* c, const char* op) {
  DataType t, labels, sum;
  TF_RETURN_IF_ERROR(c->GetAttr("T", &t));
  TF_RETURN_IF_ERROR(c->GetAttr("Tlabels", &labels));
  TF_RETURN_IF_ERROR(c->GetAttr("Tsum", &sum));
  const DataType expected = t == tensorflow::DT_DOUBLE ? tensorflow::DT_DOUBLE : tensorflow::DT_FLOAT;
  if (sum != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": Tsum must be ", DataTypeString(expected), " for y_pred of type ",
        DataTypeString(t), " (sums accumulate in float32, float64 for float64 inputs). Received: Tsum=",
        DataTypeString(sum)));
  }
  if (!IsIntegral(labels) && labels != sum) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": one-hot/soft labels must have the sums' type ", DataTypeString(sum),
        " (class ids may be uint8, int32 or int64). Received: labels of type ",
        DataTypeString(labels)));
  }
  return absl::OkStatus();
}

// y_pred (B, *spatial, C); labels (B, *spatial) class ids, or (B, *spatial, C) targets.
// Sets the shape of the sums, (batch, classes).
absl::Status CheckInputs(InferenceContext* c, const char* op, ShapeHandle* sums) {
  TF_RETURN_IF_ERROR(CheckTypes(c, op));
  ShapeHandle y;
  absl::Status status = c->WithRankAtLeast(c->input(0), 3, &y);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": y_pred must have shape (batch, *spatial, classes) with at least one spatial dim. ",
        "Received shape ", c->DebugString(c->input(0))));
  }
  DataType labels_type;
  TF_RETURN_IF_ERROR(c->GetAttr("Tlabels", &labels_type));
  const bool sparse = IsIntegral(labels_type);
  ShapeHandle expected = y;
  if (c->RankKnown(y) && sparse) {
    TF_RETURN_IF_ERROR(c->Subshape(y, 0, -1, &expected));
  } else if (sparse) {
    expected = c->UnknownShape();
  }
  ShapeHandle merged;
  status = c->Merge(c->input(1), expected, &merged);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": labels shape ", c->DebugString(c->input(1)), " does not match y_pred shape ",
        c->DebugString(y), ". ", sparse ? "Class-id labels need y_pred's shape without its "
                                          "last (class) dim."
                                        : "One-hot/soft labels need y_pred's shape."));
  }
  *sums = c->Matrix(c->Dim(y, 0), c->Dim(y, -1));
  return absl::OkStatus();
}

absl::Status SumsShape(InferenceContext* c) {
  ShapeHandle sums;
  TF_RETURN_IF_ERROR(CheckInputs(c, "FusedTverskySums", &sums));
  for (int i = 0; i < 3; ++i) c->set_output(i, sums);
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c) {
  ShapeHandle sums;
  TF_RETURN_IF_ERROR(CheckInputs(c, "FusedTverskySumsGrad", &sums));
  for (int i = 2; i < 5; ++i) {
    ShapeHandle merged;
    if (!c->Merge(c->input(i), sums, &merged).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FusedTverskySumsGrad: the upstream gradients must have shape (batch, classes) = ",
          c->DebugString(sums), ". Received ", c->DebugString(c->input(i)), " for input ", i));
    }
  }
  c->set_output(0, c->input(0));
  return absl::OkStatus();
}

}  // namespace

// The attributes of both ops, written once: the gradient op is called with the forward op's
// attributes as they are (fused.py, _sums_gradient). A chain fragment, as TensorFlow's own
// op files do it (REGISTER_OP("Neg").UNARY()).
#define TFVERSKY_SHARED_ATTRS()                                 \
  Attr("T: {half, bfloat16, float, double}")                    \
      .Attr("Tlabels: {uint8, int32, int64, float, double}")    \
      .Attr("Tsum: {float, double}")                            \
      .Attr("from_logits: bool = false")                        \
      .Attr("activation: {'softmax', 'sigmoid'} = 'softmax'")   \
      .Attr("has_ignore_index: bool = false")                   \
      .Attr("ignore_index: int = 0")

REGISTER_OP("Tfversky>FusedTverskySums")
    .Input("y_pred: T")
    .Input("labels: Tlabels")
    .Output("tp: Tsum")
    .Output("fp: Tsum")
    .Output("fn: Tsum")
    .TFVERSKY_SHARED_ATTRS()
    .SetShapeFn(SumsShape)
    .Doc(R"doc(
Soft confusion sums of the Tversky loss, with the activation fused in.

Per sample b and class c, over voxels i with probability p (y_pred itself, or its
softmax/sigmoid when from_logits), target g and weight w (0 where labels == ignore_index):
TP = sum w p g, FP = sum w p (1 - g), FN = sum w (1 - p) g.

y_pred: (batch, *spatial, classes), 1 to 64 classes.
labels: class ids (batch, *spatial), or one-hot/soft targets with y_pred's shape in Tsum.
  With one channel, the ids are 0/1 and the target is the id itself.
tp: (batch, classes) true positives, accumulated in Tsum (float32; float64 for float64).
fp: false positives.
fn: false negatives.
)doc");

REGISTER_OP("Tfversky>FusedTverskySumsGrad")
    .Input("y_pred: T")
    .Input("labels: Tlabels")
    .Input("grad_tp: Tsum")
    .Input("grad_fp: Tsum")
    .Input("grad_fn: Tsum")
    .Output("grad_y_pred: T")
    .TFVERSKY_SHARED_ATTRS()
    .SetShapeFn(GradShape)
    .Doc(R"doc(
Gradient of FusedTverskySums w.r.t. y_pred, from dL/dTP, dL/dFP, dL/dFN.

Per voxel: G_c = w (dFP_c + g_c (dTP_c - dFP_c - dFN_c)); through softmax
dz_c = p_c (G_c - sum_k p_k G_k), through sigmoid dz_c = G_c p_c (1 - p_c), else G_c.
)doc");

#undef TFVERSKY_SHARED_ATTRS

}  // namespace tfversky
