// Checks shared by the CPU and CUDA entry points.
#include "tversky_kernels.h"

namespace tfversky {

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

}  // namespace tfversky
