// From a problem's run-time activation and class count to the compile-time template
// arguments of the kernels: one switch for the CPU and the CUDA entry points.
#ifndef TFVERSKY_CSRC_KERNELS_TVERSKY_DISPATCH_H_
#define TFVERSKY_CSRC_KERNELS_TVERSKY_DISPATCH_H_

#include "tversky_kernels.h"

namespace tfversky {

// Returns Op::run<activation, class count>(problem, args...), whatever type that is
// (LabelError on the CPU, cudaError_t on CUDA). The count is a compile-time 1 or 2 where the
// binary kernels apply (they keep one or two classes in registers), 0 (read from the problem
// at run time) otherwise. Softmax always has >= 2 classes (validate).
template <class Op, class... Args>
auto dispatch(const Problem& problem, Args... args) {
  const bool one = problem.classes == 1, two = problem.classes == 2;
  switch (problem.activation) {
    case Activation::kSoftmax:
      return two ? Op::template run<Activation::kSoftmax, 2>(problem, args...)
                 : Op::template run<Activation::kSoftmax, 0>(problem, args...);
    case Activation::kSigmoid:
      return one   ? Op::template run<Activation::kSigmoid, 1>(problem, args...)
             : two ? Op::template run<Activation::kSigmoid, 2>(problem, args...)
                   : Op::template run<Activation::kSigmoid, 0>(problem, args...);
    case Activation::kNone:
      break;
  }
  return one   ? Op::template run<Activation::kNone, 1>(problem, args...)
         : two ? Op::template run<Activation::kNone, 2>(problem, args...)
               : Op::template run<Activation::kNone, 0>(problem, args...);
}

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_KERNELS_TVERSKY_DISPATCH_H_
