// CPU kernels for y_pred of type BFloat16: see tversky_cpu_impl.h.
#include "tversky_cpu_impl.h"

namespace tfversky {

TFVERSKY_INSTANTIATE_CPU_ALL_LABELS(BFloat16)

}  // namespace tfversky
