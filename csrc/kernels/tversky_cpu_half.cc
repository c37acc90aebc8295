// CPU kernels for y_pred of type Half: see tversky_cpu_impl.h.
#include "tversky_cpu_impl.h"

namespace tfversky {

TFVERSKY_INSTANTIATE_CPU_ALL_LABELS(Half)

}  // namespace tfversky
