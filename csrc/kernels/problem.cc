// Checks shared by the CPU and CUDA entry points, and the messages every binding shares.
#include <algorithm>

#include "tversky_kernels.h"

namespace tfversky {
namespace {

// As TensorFlow writes shapes ([2,3,4]), so the messages read the same on every framework.
std::string shape_string(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace

const char* validate(const Problem& problem) {
  if (problem.batch < 0 || problem.voxels < 0) return "negative batch or voxel count";
  if (problem.classes < 1 || problem.classes > kMaxClasses) {
    return "the number of classes (channels of y_pred) must be in [1, 64]";
  }
  if (problem.activation == Activation::kSoftmax && problem.classes < 2) {
    return "softmax needs at least 2 channels; use sigmoid for a single-channel map";
  }
  return nullptr;
}

std::string set_sizes(const char* op, const std::vector<int64_t>& y,
                      const std::vector<int64_t>& labels, bool sparse, Problem* p) {
  const std::string prefix = std::string(op) + ": ";
  if (y.size() < 3) {
    return prefix + "y_pred must have shape (batch, *spatial, classes) with at least one "
                    "spatial dim. Received shape " + shape_string(y);
  }
  const std::vector<int64_t> expected(y.begin(), y.end() - (sparse ? 1 : 0));
  if (labels != expected) {
    return prefix + "labels shape " + shape_string(labels) + " does not match y_pred shape " +
           shape_string(y) + ". Expected " + shape_string(expected) +
           (sparse ? " (class ids: y_pred's shape without the class dim)." : " (one-hot/soft).");
  }
  p->batch = y.front();
  p->classes = y.back();
  p->voxels = 1;
  for (size_t i = 1; i + 1 < y.size(); ++i) p->voxels *= y[i];
  if (const char* invalid = validate(*p)) {
    return prefix + invalid + ". Received y_pred shape " + shape_string(y) + "." +
           (p->classes > kMaxClasses ? " Use implementation='tf' for more classes." : "");
  }
  return "";
}

std::string check_upstream(const char* op, const std::vector<int64_t>& upstream, int input,
                           const Problem& p) {
  const std::vector<int64_t> sums = {p.batch, p.classes};
  if (upstream == sums) return "";
  return std::string(op) + ": the upstream gradients must have shape (batch, classes) = " +
         shape_string(sums) + ". Received " + shape_string(upstream) + " for input " +
         std::to_string(input);
}

std::string label_error_message(const char* op, const LabelError& e, const Problem& p) {
  if (!e.found) return "";
  const int64_t voxels = std::max<int64_t>(p.voxels, 1);
  return std::string(op) + ": labels holds " + std::to_string(e.value) + " at sample " +
         std::to_string(e.index / voxels) + ", voxel " + std::to_string(e.index % voxels) +
         ", outside [0, " + std::to_string(num_label_values(p.classes)) +
         ") (the class ids for y_pred's " + std::to_string(p.classes) +
         " channel(s)) and not ignore_index" +
         (p.has_ignore_index ? " (" + std::to_string(p.ignore_index) + ")" : " (unset)") +
         ". Fix the labels, or pass the value to skip as ignore_index.";
}

}  // namespace tfversky
