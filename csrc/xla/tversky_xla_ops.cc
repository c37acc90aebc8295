// XLA lowering of the fused Tversky ops: inside tf.function(jit_compile=True) each op
// becomes one XLA custom call to the same kernels (tversky_xla_cpu.cc, tversky_xla_cuda.cc),
// with the op's attributes and this compilation's static shapes in its opaque string.
//
// The compilation kernels are registered directly on the XLA JIT devices
// (REGISTER_KERNEL_BUILDER on XLA_CPU_JIT / XLA_GPU_JIT), not with REGISTER_XLA_OP: tf2xla
// turns REGISTER_XLA_OP registrations into kernels once per process, at the first XLA
// compilation, so a library loaded after that (tfversky loads it on the first use of the
// fused loss) would never be compiled. Direct kernel registrations are found at any time.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "build_info.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/types.h"
#include "tversky_op_attrs.h"
#include "tversky_xla_call.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/service/custom_call_target_registry.h"
#include "xla/shape_util.h"

namespace tfversky {
namespace {

using ::tensorflow::DataType;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernelContext;
using xla_call::Call;
using xla_call::Elem;
using xla_call::Labels;

absl::Status ReadTypes(OpKernelConstruction* ctx, Call* c) {
  DataType t, labels;
  TF_RETURN_IF_ERROR(ctx->GetAttr("T", &t));
  TF_RETURN_IF_ERROR(ctx->GetAttr("Tlabels", &labels));
  // The kernel registrations below admit exactly these types.
  c->elem = t == tensorflow::DT_HALF       ? Elem::kHalf
            : t == tensorflow::DT_BFLOAT16 ? Elem::kBFloat16
            : t == tensorflow::DT_DOUBLE   ? Elem::kDouble
                                           : Elem::kFloat;
  c->labels = labels == tensorflow::DT_UINT8   ? Labels::kUint8
              : labels == tensorflow::DT_INT32 ? Labels::kInt32
              : labels == tensorflow::DT_INT64 ? Labels::kInt64
                                               : Labels::kDense;
  return absl::OkStatus();
}

xla::PrimitiveType PrimitiveOf(Elem e) {
  switch (e) {
    case Elem::kHalf:
      return xla::F16;
    case Elem::kBFloat16:
      return xla::BF16;
    case Elem::kFloat:
      break;
    case Elem::kDouble:
      return xla::F64;
  }
  return xla::F32;
}

// Row-major, as the kernels read and write (channels-last, contiguous).
xla::Shape RowMajor(xla::PrimitiveType type, absl::Span<const int64_t> dims) {
  return xla::ShapeUtil::MakeShapeWithDescendingLayout(type, dims);
}

// Input i's shape in this compilation. XLA compiles for static shapes; a dynamic (bounded)
// dimension, which tf2xla makes only for ops such as tf.where or tf.unique, is refused.
absl::StatusOr<tensorflow::TensorShape> StaticShape(XlaOpKernelContext* ctx, int i,
                                                    const char* op) {
  TF_ASSIGN_OR_RETURN(xla::Shape shape, ctx->InputXlaShape(i));
  if (shape.is_dynamic()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": input ", i, " has the dynamic shape ", shape.ToString(),
        " inside XLA; the fused op's lowering needs static shapes. Use implementation='tf' "
        "there."));
  }
  return tensorflow::TensorShape(shape.dimensions());
}

// What both lowerings share: the attributes and types, read once, and the custom call.
class FusedTverskyXlaOp : public tensorflow::XlaOpKernel {
 protected:
  FusedTverskyXlaOp(OpKernelConstruction* ctx, const char* op, const char* target)
      : XlaOpKernel(ctx),
        op_(op),
        on_gpu_(ctx->device_type().type_string() == tensorflow::DEVICE_GPU_XLA_JIT),
        target_(target) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &call_.problem));
    OP_REQUIRES_OK(ctx, ReadTypes(ctx, &call_));
  }

  // The call for this compilation's (static) input shapes, checked as the TF kernels check.
  absl::Status MakeCall(XlaOpKernelContext* ctx, Call* c) const {
    *c = call_;
    TF_ASSIGN_OR_RETURN(tensorflow::TensorShape y, StaticShape(ctx, 0, op_));
    TF_ASSIGN_OR_RETURN(tensorflow::TensorShape labels, StaticShape(ctx, 1, op_));
    return SetSizes(op_, y, labels, call_.labels != Labels::kDense, &c->problem);
  }

  // One custom call on all the op's inputs, every buffer row-major.
  absl::StatusOr<xla::XlaOp> Emit(XlaOpKernelContext* ctx, const Call& c,
                                  const xla::Shape& result) const {
    std::vector<xla::XlaOp> operands;
    std::vector<xla::Shape> shapes;
    for (int i = 0; i < ctx->num_inputs(); ++i) {
      TF_ASSIGN_OR_RETURN(xla::Shape shape, ctx->InputXlaShape(i));
      operands.push_back(ctx->Input(i));
      shapes.push_back(RowMajor(shape.element_type(), shape.dimensions()));
    }
    return xla::CustomCallWithLayout(
        ctx->builder(), target_, operands, result, shapes, xla_call::Encode(c),
        /*has_side_effect=*/false, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_STATUS_RETURNING_UNIFIED);
  }

  const char* const op_;
  const bool on_gpu_;  // compiled for XLA_GPU_JIT (CUDA builds only)

 private:
  const char* const target_;
  Call call_;  // the attributes and types; the sizes are each compilation's
};

class FusedTverskySumsXlaOp : public FusedTverskyXlaOp {
 public:
  explicit FusedTverskySumsXlaOp(OpKernelConstruction* ctx)
      : FusedTverskyXlaOp(ctx, "FusedTverskySums", xla_call::kSumsTarget) {}

  void Compile(XlaOpKernelContext* ctx) override {
    Call c;
    OP_REQUIRES_OK(ctx, MakeCall(ctx, &c));
    const xla::PrimitiveType sum = c.elem == Elem::kDouble ? xla::F64 : xla::F32;
    std::vector<xla::Shape> outputs(3, RowMajor(sum, {c.problem.batch, c.problem.classes}));
#if TFVERSKY_WITH_CUDA
    if (on_gpu_) {  // the first stage's partial sums, in a buffer XLA owns
      c.workspace_bytes = xla_call::SumsWorkspaceBytes(c);
      outputs.push_back(RowMajor(xla::U8, {std::max<int64_t>(int64_t(c.workspace_bytes), 1)}));
    }
#endif
    absl::StatusOr<xla::XlaOp> call = Emit(ctx, c, xla::ShapeUtil::MakeTupleShape(outputs));
    OP_REQUIRES_OK(ctx, call.status());
    for (int i = 0; i < 3; ++i) ctx->SetOutput(i, xla::GetTupleElement(*call, i));
  }
};

class FusedTverskySumsGradXlaOp : public FusedTverskyXlaOp {
 public:
  explicit FusedTverskySumsGradXlaOp(OpKernelConstruction* ctx)
      : FusedTverskyXlaOp(ctx, "FusedTverskySumsGrad", xla_call::kGradTarget) {}

  void Compile(XlaOpKernelContext* ctx) override {
    Call c;
    OP_REQUIRES_OK(ctx, MakeCall(ctx, &c));
    for (int i = 2; i < 5; ++i) {
      absl::StatusOr<tensorflow::TensorShape> upstream = StaticShape(ctx, i, op_);
      OP_REQUIRES_OK(ctx, upstream.status());
      OP_REQUIRES_OK(ctx, CheckUpstream(op_, *upstream, i, c.problem));
    }
    absl::StatusOr<xla::Shape> y = ctx->InputXlaShape(0);
    OP_REQUIRES_OK(ctx, y.status());
    absl::StatusOr<xla::XlaOp> call = Emit(ctx, c, RowMajor(PrimitiveOf(c.elem), y->dimensions()));
    OP_REQUIRES_OK(ctx, call.status());
    ctx->SetOutput(0, *call);
  }
};

}  // namespace

XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM(xla_call::kSumsTarget, xla_call::SumsHost, "Host");
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM(xla_call::kGradTarget, xla_call::GradHost, "Host");
#if TFVERSKY_WITH_CUDA
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM(xla_call::kSumsTarget, xla_call::SumsCuda, "CUDA");
XLA_REGISTER_CUSTOM_CALL_TARGET_WITH_SYM(xla_call::kGradTarget, xla_call::GradCuda, "CUDA");
#endif

// The types of the TF kernels (tversky_kernels.cc); the shape functions reject the
// combinations that have no kernel (a Tsum that is not T's accumulation type, dense labels
// not in Tsum) before XLA sees them.
#define TFVERSKY_REGISTER_XLA(OP, DEVICE, KERNEL)                                       \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name(OP)                                                                          \
          .Device(DEVICE)                                                               \
          .TypeConstraint("T", {tensorflow::DT_HALF, tensorflow::DT_BFLOAT16,           \
                                tensorflow::DT_FLOAT, tensorflow::DT_DOUBLE})           \
          .TypeConstraint("Tlabels", {tensorflow::DT_UINT8, tensorflow::DT_INT32,       \
                                      tensorflow::DT_INT64, tensorflow::DT_FLOAT,       \
                                      tensorflow::DT_DOUBLE})                           \
          .TypeConstraint("Tsum", {tensorflow::DT_FLOAT, tensorflow::DT_DOUBLE}),       \
      KERNEL);

#define TFVERSKY_REGISTER_XLA_DEVICE(DEVICE)                                          \
  TFVERSKY_REGISTER_XLA("Tfversky>FusedTverskySums", DEVICE, FusedTverskySumsXlaOp)   \
  TFVERSKY_REGISTER_XLA("Tfversky>FusedTverskySumsGrad", DEVICE, FusedTverskySumsGradXlaOp)

TFVERSKY_REGISTER_XLA_DEVICE(::tensorflow::DEVICE_CPU_XLA_JIT)
#if TFVERSKY_WITH_CUDA
TFVERSKY_REGISTER_XLA_DEVICE(::tensorflow::DEVICE_GPU_XLA_JIT)
#endif

#undef TFVERSKY_REGISTER_XLA_DEVICE
#undef TFVERSKY_REGISTER_XLA

}  // namespace tfversky
