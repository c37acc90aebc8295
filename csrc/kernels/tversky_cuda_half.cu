// CUDA kernels for y_pred of type Half: see tversky_cuda_impl.cuh.
#include "tversky_cuda_impl.cuh"

namespace tfversky {

TFVERSKY_INSTANTIATE_CUDA_ALL_LABELS(Half)

}  // namespace tfversky
