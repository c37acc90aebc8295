// pybind11 module `_tfversky_kernels`: the fused Tversky kernels without TensorFlow.
//
// CPU: NumPy arrays in, NumPy arrays out (threads from std::thread). CUDA: any objects with
// `__cuda_array_interface__` (CuPy, PyTorch, Numba), outputs written in place. It exists
// so that the kernels can be tested against NumPy and timed on a GPU machine that has no
// TensorFlow (scripts/gpu_check.sh), and it mirrors the TensorFlow op's contract:
// y_pred (B, *spatial, C); labels sparse (B, *spatial) uint8/int32/int64, or dense
// (B, *spatial, C) float32 (float64 for float64 y_pred); sums (B, C).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "build_info.h"
#include "tversky_kernels.h"

#if TFVERSKY_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;

namespace tfversky {
namespace {

enum class DType { kFloat16, kBFloat16, kFloat32, kFloat64, kUInt8, kInt32, kInt64 };

DType parse_dtype(const std::string& name, const char* argument) {
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float32") return DType::kFloat32;
  if (name == "float64") return DType::kFloat64;
  if (name == "uint8") return DType::kUInt8;
  if (name == "int32") return DType::kInt32;
  if (name == "int64") return DType::kInt64;
  throw py::type_error(std::string("Unsupported dtype for `") + argument + "`: " + name +
                       ". y_pred takes float16, bfloat16, float32 or float64; labels uint8, "
                       "int32, int64 (class ids) or the accumulation float type (targets).");
}

bool is_float(DType d) { return d <= DType::kFloat64; }

const char* dtype_name(DType d) {
  static const char* const kNames[] = {"float16", "bfloat16", "float32", "float64",
                                       "uint8",   "int32",    "int64"};
  return kNames[int(d)];
}

template <class T>
struct Tag {
  using type = T;
};

// Calls fn(Tag<T>, Tag<L>) for the runtime dtypes of y_pred and labels.
template <class T, class Fn>
auto with_label_type(DType labels, Fn&& fn) {
  switch (labels) {
    case DType::kUInt8:
      return fn(Tag<T>(), Tag<uint8_t>());
    case DType::kInt32:
      return fn(Tag<T>(), Tag<int32_t>());
    case DType::kInt64:
      return fn(Tag<T>(), Tag<int64_t>());
    default:
      return fn(Tag<T>(), Tag<Acc<T>>());  // dense: checked in make_problem
  }
}

template <class Fn>
auto with_types(DType y, DType labels, Fn&& fn) {
  switch (y) {
    case DType::kFloat16:
      return with_label_type<Half>(labels, fn);
    case DType::kBFloat16:
      return with_label_type<BFloat16>(labels, fn);
    case DType::kFloat32:
      return with_label_type<float>(labels, fn);
    default:
      return with_label_type<double>(labels, fn);
  }
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

Activation parse_activation(bool from_logits, const std::string& activation) {
  if (activation != "softmax" && activation != "sigmoid") {
    throw py::value_error("Invalid value for argument `activation`: expected 'softmax' or "
                          "'sigmoid'. Received: activation='" + activation + "'");
  }
  if (!from_logits) return Activation::kNone;
  return activation == "softmax" ? Activation::kSoftmax : Activation::kSigmoid;
}

// Checks shapes and dtypes the way the TensorFlow op does and returns the problem.
Problem make_problem(const std::vector<int64_t>& y_shape, DType y_dtype,
                     const std::vector<int64_t>& label_shape, DType label_dtype,
                     bool from_logits, const std::string& activation,
                     const py::object& ignore_index) {
  if (!is_float(y_dtype)) {
    throw py::type_error("`y_pred` must be float16, bfloat16, float32 or float64.");
  }
  if (y_shape.size() < 3) {
    throw py::value_error("`y_pred` must have shape (batch, *spatial, classes) with at least one "
                          "spatial dim. Received shape " + shape_string(y_shape));
  }
  const bool sparse = !is_float(label_dtype);
  const std::vector<int64_t> expected(y_shape.begin(), y_shape.end() - (sparse ? 1 : 0));
  if (label_shape != expected) {
    throw py::value_error("Shape mismatch: labels " + shape_string(label_shape) + " vs y_pred " +
                          shape_string(y_shape) + ". " + (sparse ? "Class-id" : "One-hot/soft") +
                          " labels must have shape " + shape_string(expected) + ".");
  }
  // Dense labels are read as the sums' type: any other width (float16, bfloat16, or float32
  // for float64 y_pred) would be read past the end of the buffer.
  const DType sum_dtype = y_dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  if (!sparse && label_dtype != sum_dtype) {
    const std::string wanted = sum_dtype == DType::kFloat64 ? "float64" : "float32";
    throw py::type_error("One-hot/soft labels must have the sums' dtype, " + wanted + " for " +
                         dtype_name(y_dtype) + " y_pred. Received labels of dtype " +
                         dtype_name(label_dtype) + ": cast them, e.g. labels.astype('" + wanted +
                         "').");
  }
  if (!sparse && !ignore_index.is_none()) {
    throw py::value_error("`ignore_index` needs class-id labels, not one-hot/soft labels.");
  }
  Problem p;
  p.batch = y_shape.front();
  p.classes = y_shape.back();
  p.voxels = 1;
  for (size_t i = 1; i + 1 < y_shape.size(); ++i) p.voxels *= y_shape[i];
  p.activation = parse_activation(from_logits, activation);
  p.has_ignore_index = !ignore_index.is_none();
  p.ignore_index = p.has_ignore_index ? ignore_index.cast<int64_t>() : 0;
  if (const char* invalid = validate(p)) {
    throw py::value_error(std::string("Invalid problem: ") + invalid + ". y_pred shape " +
                          shape_string(y_shape));
  }
  return p;
}

// ---- CPU ----

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

DType dtype_of(const py::array& a, const char* argument) {
  return parse_dtype(py::str(a.dtype().attr("name")), argument);
}

ParallelFor thread_runner(int num_threads) {
  const int threads =
      num_threads > 0 ? num_threads : std::max(1, int(std::thread::hardware_concurrency()));
  return [threads](int64_t tasks, const std::function<void(int64_t, int64_t)>& work) {
    const int64_t used = std::min<int64_t>(threads, tasks);
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < used; ++t) {
      pool.emplace_back(work, tasks * t / used, tasks * (t + 1) / used);
    }
    if (used > 0) work(0, tasks / used);
    for (std::thread& thread : pool) thread.join();
  };
}

void raise_label_error(const LabelError& e, const Problem& p) {
  throw py::value_error("labels[flat index " + std::to_string(e.index) + "] = " +
                        std::to_string(e.value) + " is outside [0, " +
                        std::to_string(num_label_values(p.classes)) +
                        ") (the class ids) and not ignore_index. Fix the labels, or pass the "
                        "value to skip as ignore_index.");
}

// y_pred and labels of a CPU call, C-contiguous, with their dtypes and the checked problem.
struct CpuInputs {
  py::array y_pred, labels;
  DType y_dtype, label_dtype;
  Problem problem;

  py::dtype sum_dtype() const {
    return py::dtype(y_dtype == DType::kFloat64 ? "float64" : "float32");
  }
};

CpuInputs cpu_inputs(const py::array& y_pred, const py::array& labels, bool from_logits,
                     const std::string& activation, const py::object& ignore_index) {
  CpuInputs in;
  in.y_pred = py::array::ensure(y_pred, py::array::c_style);
  in.labels = py::array::ensure(labels, py::array::c_style);
  in.y_dtype = dtype_of(in.y_pred, "y_pred");
  in.label_dtype = dtype_of(in.labels, "labels");
  in.problem = make_problem(shape_of(in.y_pred), in.y_dtype, shape_of(in.labels), in.label_dtype,
                            from_logits, activation, ignore_index);
  return in;
}

py::tuple confusion_sums(const py::array& y_pred, const py::array& labels, bool from_logits,
                         const std::string& activation, const py::object& ignore_index,
                         int num_threads) {
  const CpuInputs in = cpu_inputs(y_pred, labels, from_logits, activation, ignore_index);
  const Problem& p = in.problem;
  py::array tp(in.sum_dtype(), {p.batch, p.classes}), fp(in.sum_dtype(), {p.batch, p.classes}),
      fn(in.sum_dtype(), {p.batch, p.classes});
  const LabelError error = with_types(in.y_dtype, in.label_dtype, [&](auto t, auto l) {
    using T = typename decltype(t)::type;
    using L = typename decltype(l)::type;
    const T* y = static_cast<const T*>(in.y_pred.data());
    const L* lab = static_cast<const L*>(in.labels.data());
    auto* out_tp = static_cast<Acc<T>*>(tp.mutable_data());
    auto* out_fp = static_cast<Acc<T>*>(fp.mutable_data());
    auto* out_fn = static_cast<Acc<T>*>(fn.mutable_data());
    py::gil_scoped_release release;
    return sums_cpu<T, L>(p, y, lab, out_tp, out_fp, out_fn, thread_runner(num_threads));
  });
  if (error.found) raise_label_error(error, p);
  return py::make_tuple(tp, fp, fn);
}

py::array confusion_sums_grad(const py::array& y_pred, const py::array& labels,
                              const py::array& grad_tp, const py::array& grad_fp,
                              const py::array& grad_fn, bool from_logits,
                              const std::string& activation, const py::object& ignore_index,
                              int num_threads) {
  const CpuInputs in = cpu_inputs(y_pred, labels, from_logits, activation, ignore_index);
  const Problem& p = in.problem;
  const std::vector<int64_t> sums_shape = {p.batch, p.classes};
  std::vector<py::array> upstream;
  for (const py::array* g : {&grad_tp, &grad_fp, &grad_fn}) {
    if (shape_of(*g) != sums_shape) {
      throw py::value_error("The upstream gradients must have shape (batch, classes) = " +
                            shape_string(sums_shape) + ". Received " + shape_string(shape_of(*g)));
    }
    upstream.push_back(py::array::ensure(g->attr("astype")(in.sum_dtype()), py::array::c_style));
  }
  py::array grad(in.y_pred.dtype(), shape_of(in.y_pred));
  const LabelError error = with_types(in.y_dtype, in.label_dtype, [&](auto t, auto l) {
    using T = typename decltype(t)::type;
    using L = typename decltype(l)::type;
    const T* y = static_cast<const T*>(in.y_pred.data());
    const L* lab = static_cast<const L*>(in.labels.data());
    const auto* d_tp = static_cast<const Acc<T>*>(upstream[0].data());
    const auto* d_fp = static_cast<const Acc<T>*>(upstream[1].data());
    const auto* d_fn = static_cast<const Acc<T>*>(upstream[2].data());
    T* out = static_cast<T*>(grad.mutable_data());
    py::gil_scoped_release release;
    return sums_grad_cpu<T, L>(p, y, lab, d_tp, d_fp, d_fn, out, thread_runner(num_threads));
  });
  if (error.found) raise_label_error(error, p);
  return grad;
}

// ---- conversions and exp of the shared header, exposed for the tests ----

// An array of T, C-contiguous: pybind11 converts what it is given (forcecast).
template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// fn applied to every element of x, in an array of x's shape.
template <class Out, class In, class Fn>
py::array_t<Out> map_elements(const CArray<In>& x, Fn fn) {
  py::array_t<Out> out(x.request().shape);
  const In* in = x.data();
  Out* o = out.mutable_data();
  for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = fn(in[i]);
  return out;
}

// Whether the 16-bit `dtype` is float16 (else bfloat16).
bool is_float16(const std::string& dtype) {
  if (dtype != "float16" && dtype != "bfloat16") {
    throw py::value_error("Invalid value for argument `dtype`: expected 'float16' or 'bfloat16'. "
                          "Received: dtype='" + dtype + "'");
  }
  return dtype == "float16";
}

py::array_t<uint16_t> round_to_16bit(const CArray<float>& x, const std::string& dtype) {
  if (is_float16(dtype)) {
    return map_elements<uint16_t>(x, [](float v) { return from_acc<Half>(v).bits; });
  }
  return map_elements<uint16_t>(x, [](float v) { return from_acc<BFloat16>(v).bits; });
}

py::array_t<float> widen_16bit(const CArray<uint16_t>& bits, const std::string& dtype) {
  if (is_float16(dtype)) {
    return map_elements<float>(bits, [](uint16_t b) { return to_acc(Half{b}); });
  }
  return map_elements<float>(bits, [](uint16_t b) { return to_acc(BFloat16{b}); });
}

py::array_t<float> exp_approx_array(const CArray<float>& x) {
  return map_elements<float>(x, [](float v) { return exp_approx(v); });
}

// ---- CUDA ----

#if TFVERSKY_WITH_CUDA

// A device array described by __cuda_array_interface__ (version 2 or 3), C-contiguous.
struct DeviceArray {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::string typestr;
};

DeviceArray device_array(const py::object& obj, const char* argument) {
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    throw py::type_error(std::string("`") + argument +
                         "` must be a CUDA array (CuPy, PyTorch, ...) with "
                         "__cuda_array_interface__.");
  }
  const py::dict cai = obj.attr("__cuda_array_interface__");
  DeviceArray a;
  a.data = reinterpret_cast<void*>(py::cast<uintptr_t>(py::tuple(cai["data"])[0]));
  for (const py::handle d : py::tuple(cai["shape"])) a.shape.push_back(py::cast<int64_t>(d));
  a.typestr = py::cast<std::string>(cai["typestr"]);
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const py::tuple strides = cai["strides"];
    int64_t expected = std::stoll(a.typestr.substr(2));  // itemsize
    for (int64_t i = int64_t(a.shape.size()) - 1; i >= 0; --i) {
      if (a.shape[i] > 1 && py::cast<int64_t>(strides[i]) != expected) {
        throw py::value_error(std::string("`") + argument + "` must be C-contiguous.");
      }
      expected *= a.shape[i];
    }
  }
  return a;
}

DType cuda_dtype(const DeviceArray& a, const char* argument) {
  const std::string kind = a.typestr.substr(1);
  if (kind == "f2") return DType::kFloat16;
  if (kind == "f4") return DType::kFloat32;
  if (kind == "f8") return DType::kFloat64;
  if (kind == "u1") return DType::kUInt8;
  if (kind == "i4") return DType::kInt32;
  if (kind == "i8") return DType::kInt64;
  return parse_dtype(a.typestr, argument);  // raises
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void check_kernel(const char* message) {
  if (message != nullptr) throw std::runtime_error(std::string("CUDA kernel: ") + message);
}

// y_pred and labels of a CUDA call, with their dtypes and the checked problem.
struct CudaInputs {
  DeviceArray y, labels;
  DType y_dtype, label_dtype;
  Problem problem;

  // A (batch, classes) array of the sums' dtype, or a ValueError naming `argument`.
  DeviceArray sums_array(const py::object& obj, const char* argument) const {
    const DeviceArray a = device_array(obj, argument);
    const DType expected = y_dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
    if (a.shape != std::vector<int64_t>{problem.batch, problem.classes} ||
        cuda_dtype(a, argument) != expected) {
      throw py::value_error(std::string("`") + argument + "` must be a " +
                            (expected == DType::kFloat64 ? "float64" : "float32") +
                            " array of shape (batch, classes) = " +
                            shape_string({problem.batch, problem.classes}));
    }
    return a;
  }
};

// `y_dtype_name` overrides y_pred's typestr, for bfloat16 (which the interface cannot
// express: pass a 2-byte view, e.g. torch's .view(torch.int16), with y_dtype="bfloat16").
CudaInputs cuda_inputs(const py::object& y_pred, const py::object& labels, bool from_logits,
                       const std::string& activation, const py::object& ignore_index,
                       const py::object& y_dtype_name) {
  CudaInputs in;
  in.y = device_array(y_pred, "y_pred");
  in.labels = device_array(labels, "labels");
  in.y_dtype = y_dtype_name.is_none() ? cuda_dtype(in.y, "y_pred")
                                      : parse_dtype(py::str(y_dtype_name), "y_dtype");
  in.label_dtype = cuda_dtype(in.labels, "labels");
  in.problem = make_problem(in.y.shape, in.y_dtype, in.labels.shape, in.label_dtype, from_logits,
                            activation, ignore_index);
  return in;
}

void cuda_confusion_sums(const py::object& y_pred, const py::object& labels, const py::object& tp,
                         const py::object& fp, const py::object& fn, bool from_logits,
                         const std::string& activation, const py::object& ignore_index,
                         const py::object& y_dtype_name, uintptr_t stream) {
  const CudaInputs in =
      cuda_inputs(y_pred, labels, from_logits, activation, ignore_index, y_dtype_name);
  const Problem& p = in.problem;
  const DeviceArray out_tp = in.sums_array(tp, "tp"), out_fp = in.sums_array(fp, "fp"),
                    out_fn = in.sums_array(fn, "fn");
  with_types(in.y_dtype, in.label_dtype, [&](auto t, auto l) {
    using T = typename decltype(t)::type;
    using L = typename decltype(l)::type;
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    py::gil_scoped_release release;
    const size_t bytes = sums_cuda_workspace_bytes<T, L>(p);
    void* workspace = nullptr;
    check_cuda(cudaMallocAsync(&workspace, std::max<size_t>(bytes, 1), s), "cudaMallocAsync");
    const char* message = sums_cuda<T, L>(
        p, static_cast<const T*>(in.y.data), static_cast<const L*>(in.labels.data),
        static_cast<Acc<T>*>(out_tp.data), static_cast<Acc<T>*>(out_fp.data),
        static_cast<Acc<T>*>(out_fn.data), workspace, bytes, s);
    check_cuda(cudaFreeAsync(workspace, s), "cudaFreeAsync");
    check_kernel(message);
    return 0;
  });
}

void cuda_confusion_sums_grad(const py::object& y_pred, const py::object& labels,
                              const py::object& grad_tp, const py::object& grad_fp,
                              const py::object& grad_fn, const py::object& grad_y_pred,
                              bool from_logits, const std::string& activation,
                              const py::object& ignore_index, const py::object& y_dtype_name,
                              uintptr_t stream) {
  const CudaInputs in =
      cuda_inputs(y_pred, labels, from_logits, activation, ignore_index, y_dtype_name);
  const Problem& p = in.problem;
  const DeviceArray d_tp = in.sums_array(grad_tp, "grad_tp"),
                    d_fp = in.sums_array(grad_fp, "grad_fp"),
                    d_fn = in.sums_array(grad_fn, "grad_fn"),
                    out = device_array(grad_y_pred, "grad_y_pred");
  if (out.shape != in.y.shape || out.typestr.substr(2) != in.y.typestr.substr(2)) {
    throw py::value_error("`grad_y_pred` must have y_pred's shape and dtype.");
  }
  with_types(in.y_dtype, in.label_dtype, [&](auto t, auto l) {
    using T = typename decltype(t)::type;
    using L = typename decltype(l)::type;
    py::gil_scoped_release release;
    check_kernel(sums_grad_cuda<T, L>(
        p, static_cast<const T*>(in.y.data), static_cast<const L*>(in.labels.data),
        static_cast<const Acc<T>*>(d_tp.data), static_cast<const Acc<T>*>(d_fp.data),
        static_cast<const Acc<T>*>(d_fn.data), static_cast<T*>(out.data),
        reinterpret_cast<void*>(stream)));
    return 0;
  });
}

int cuda_device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

#endif  // TFVERSKY_WITH_CUDA

}  // namespace
}  // namespace tfversky

PYBIND11_MODULE(_tfversky_kernels, m) {
  using namespace tfversky;
  namespace py = pybind11;
  m.doc() = R"doc(The fused Tversky kernels of tfversky, without TensorFlow.

Example:

>>> import numpy as np
>>> from tfversky import _tfversky_kernels as k
>>> logits = np.zeros((1, 4, 4, 4, 2), np.float32); labels = np.zeros((1, 4, 4, 4), np.uint8)
>>> tp, fp, fn = k.confusion_sums(logits, labels, from_logits=True)
>>> fp.tolist()   # p = 0.5 everywhere, all 64 voxels background
[[0.0, 32.0]]
)doc";
  m.attr("__version__") = TFVERSKY_VERSION;
  m.attr("build_info") = py::dict(
      py::arg("version") = TFVERSKY_VERSION, py::arg("cuda") = bool(TFVERSKY_WITH_CUDA),
      py::arg("cuda_version") = TFVERSKY_CUDA_VERSION,
      py::arg("cuda_architectures") = TFVERSKY_CUDA_ARCHITECTURES,
      py::arg("portable") = bool(TFVERSKY_PORTABLE), py::arg("isa") = TFVERSKY_ISA_FEATURES,
      py::arg("compiler") = TFVERSKY_COMPILER);
  m.attr("max_classes") = kMaxClasses;
  m.attr("cpu_task_voxels") = kCpuTaskVoxels;

  m.def("confusion_sums", &confusion_sums, py::arg("y_pred"), py::arg("labels"), py::kw_only(),
        py::arg("from_logits") = false, py::arg("activation") = "softmax",
        py::arg("ignore_index") = py::none(), py::arg("num_threads") = 0,
        R"doc(TP, FP, FN per sample and class: three arrays (batch, classes), float32
(float64 for float64 y_pred). num_threads=0 uses every core; the result does not
depend on it. Raises ValueError on a label outside [0, C) that is not ignore_index.)doc");
  m.def("confusion_sums_grad", &confusion_sums_grad, py::arg("y_pred"), py::arg("labels"),
        py::arg("grad_tp"), py::arg("grad_fp"), py::arg("grad_fn"), py::kw_only(),
        py::arg("from_logits") = false, py::arg("activation") = "softmax",
        py::arg("ignore_index") = py::none(), py::arg("num_threads") = 0,
        "Gradient w.r.t. y_pred (its shape and dtype) from dL/dTP, dL/dFP, dL/dFN.");
  m.def("round_to_16bit", &round_to_16bit, py::arg("x"), py::arg("dtype"),
        "float32 -> float16/bfloat16 bits, rounded as the kernels round their outputs.");
  m.def("widen_16bit", &widen_16bit, py::arg("bits"), py::arg("dtype"),
        "float16/bfloat16 bits -> float32, as the kernels read their inputs.");
  m.def("exp_approx", &exp_approx_array, py::arg("x"), "The kernels' float32 exp.");
#if TFVERSKY_WITH_CUDA
  m.def("cuda_device_count", &cuda_device_count, "Number of visible CUDA devices.");
  m.def("cuda_confusion_sums", &cuda_confusion_sums, py::arg("y_pred"), py::arg("labels"),
        py::arg("tp"), py::arg("fp"), py::arg("fn"), py::kw_only(), py::arg("from_logits") = false,
        py::arg("activation") = "softmax", py::arg("ignore_index") = py::none(),
        py::arg("y_dtype") = py::none(), py::arg("stream") = 0,
        R"doc(CUDA pass 1 on device arrays (__cuda_array_interface__): writes TP, FP, FN
into tp, fp, fn (batch, classes). Asynchronous on `stream` (a cudaStream_t as int;
0 = the legacy default stream). Out-of-range labels give NaN sums for their sample.)doc");
  m.def("cuda_confusion_sums_grad", &cuda_confusion_sums_grad, py::arg("y_pred"),
        py::arg("labels"), py::arg("grad_tp"), py::arg("grad_fp"), py::arg("grad_fn"),
        py::arg("grad_y_pred"), py::kw_only(), py::arg("from_logits") = false,
        py::arg("activation") = "softmax", py::arg("ignore_index") = py::none(),
        py::arg("y_dtype") = py::none(), py::arg("stream") = 0,
        "CUDA pass 2: writes dL/dy_pred into grad_y_pred. Asynchronous on `stream`.");
#else
  m.def("cuda_device_count", []() { return 0; }, "0: this build has no CUDA kernels.");
#endif
}
