#include "runtime/device_context.h"

#include "runtime/error.h"
#ifdef XF_WITH_CUDA
#include "runtime/cuda/context.h"
#endif

namespace xfr {

int cuda_device_count() {
#ifdef XF_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_unavailable_reason() {
#ifdef XF_WITH_CUDA
  return cuda::unavailable_reason();
#else
  return "this build has no CUDA backend (configured with XF_CUDA=OFF or without nvcc)";
#endif
}

Device resolve_device(const std::string& name, const std::string& what) {
  if (name == "cpu") return Device::cpu();
  if (name == "auto") return cuda_device_count() > 0 ? Device::cuda(0) : Device::cpu();
  int index = 0;
  if (name == "cuda") {
    index = 0;
  } else if (name.rfind("cuda:", 0) == 0 && name.size() > 5 &&
             name.find_first_not_of("0123456789", 5) == std::string::npos && name.size() < 9) {
    index = std::stoi(name.substr(5));
  } else {
    throw Error("config", str_cat("unknown device '", name, "' (known: auto, cpu, cuda, cuda:N)"), what);
  }
  const int n = cuda_device_count();
  if (index >= n) {
    const std::string why = cuda_unavailable_reason();
    throw Error("config",
                str_cat("device '", name, "' is not available: ",
                        n == 0 ? (why.empty() ? std::string("no CUDA device") : why)
                               : str_cat("this machine has ", n, " CUDA device", n == 1 ? "" : "s")),
                what);
  }
  return Device::cuda(index);
}

std::shared_ptr<void> capture_graph(DeviceContext& ctx, const std::function<void()>& work) {
  ctx.begin_capture();
  try {
    work();
  } catch (...) {
    try {
      ctx.end_capture();  // leave the stream out of capture mode; the first error is the one to report
    } catch (...) {
    }
    throw;
  }
  return ctx.end_capture();
}

std::shared_ptr<DeviceContext> make_device_context(Device device) {
  if (device.is_cpu()) return nullptr;
#ifdef XF_WITH_CUDA
  return cuda::CudaContext::create(device.index);
#else
  throw Error("cuda", "no CUDA backend in this build: " + cuda_unavailable_reason());
#endif
}

}  // namespace xfr
