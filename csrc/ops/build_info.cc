// What this op library was built from and against, readable without loading it:
// tfversky's loader finds the marker in the file's bytes and checks the TensorFlow version
// before calling tf.load_op_library (a library built for another TensorFlow can crash), the
// CPU features the kernels were compiled for (isa, as /proc/cpuinfo names them) against this
// CPU's, and the CUDA runtime against the driver.
//
// Every framework binding (the TF op and its XLA lowering, the JAX FFI handlers, the PyTorch
// ops) links this file; TFVERSKY_FRAMEWORK_INFO, set per library by CMake, names the
// framework and version it was built against ("jaxlib=0.8.1", "torch=2.13.0").
#include "build_info.h"

#ifndef TFVERSKY_FRAMEWORK_INFO
#define TFVERSKY_FRAMEWORK_INFO "tensorflow=" TFVERSKY_TF_VERSION
#endif

extern "C" __attribute__((visibility("default"), used)) const char tfversky_build_info[] =
    "tfversky-build-info:"
    "version=" TFVERSKY_VERSION ";" TFVERSKY_FRAMEWORK_INFO
    ";cuda=" TFVERSKY_CUDA_VERSION ";cuda_architectures=" TFVERSKY_CUDA_ARCHITECTURES
    ";portable=" TFVERSKY_PORTABLE_STRING ";isa=" TFVERSKY_ISA_FEATURES
    ";compiler=" TFVERSKY_COMPILER;
