// CPU kernels for y_pred of type float: see tversky_cpu_impl.h.
#include "tversky_cpu_impl.h"

namespace tfversky {

TFVERSKY_INSTANTIATE_CPU_ALL_LABELS(float)

}  // namespace tfversky
