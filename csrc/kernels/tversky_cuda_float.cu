// CUDA kernels for y_pred of type float: see tversky_cuda_impl.cuh.
#include "tversky_cuda_impl.cuh"

namespace tfversky {

TFVERSKY_INSTANTIATE_CUDA_ALL_LABELS(float)

}  // namespace tfversky
