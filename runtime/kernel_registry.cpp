#include "runtime/kernel_registry.h"

#include "runtime/device_context.h"
#include "runtime/error.h"

namespace xfr {

void KernelRegistry::add(const std::string& op, Device::Kind device, KernelFn fn) {
  const auto key = std::make_pair(op, device);
  XF_CHECK(kernels_.count(key) == 0, "kernel_registry", "kernel for '", op, "' registered twice");
  kernels_[key] = fn;
}

KernelFn KernelRegistry::find(const std::string& op, Device::Kind device) const {
  auto it = kernels_.find(std::make_pair(op, device));
  return it == kernels_.end() ? nullptr : it->second;
}

KernelFn KernelRegistry::get(const std::string& op, Device device) const {
  KernelFn fn = find(op, device.kind);
  if (!fn) throw Error(op, "has no kernel for device " + device.str() + " in this build");
  return fn;
}

std::vector<std::string> KernelRegistry::ops(Device::Kind device) const {
  std::vector<std::string> r;
  for (const auto& [key, fn] : kernels_)
    if (key.second == device) r.push_back(key.first);
  return r;
}

const KernelRegistry& KernelRegistry::builtin() {
  // Built once, then only read: thread-safe initialisation of an immutable table.
  static const KernelRegistry registry = [] {
    KernelRegistry r;
    register_cpu_kernels(r);
#ifdef XF_WITH_CUDA
    register_cuda_kernels(r);
#endif
    return r;
  }();
  return registry;
}

std::vector<Tensor> run_op(const Op& op, const std::vector<Tensor>& inputs, ThreadPool* pool, uint64_t rng_seed,
                           uint64_t rng_offset, DeviceContext* device_ctx) {
  std::vector<TensorMeta> meta;
  std::vector<Tensor> in;
  if (!device_ctx && !inputs.empty()) device_ctx = inputs[0].context();
  Device device = device_ctx ? device_ctx->device() : inputs.empty() ? Device::cpu() : inputs[0].device();
  for (const auto& t : inputs) {
    XF_CHECK(t.defined(), op.name(), "undefined input tensor");
    XF_CHECK(t.device() == device, op.name(), "inputs on different devices: ", device.str(), " and ",
             t.device().str());
    meta.push_back(TensorMeta{t.shape(), t.dtype()});
    in.push_back(t.contiguous());
  }
  const auto out_meta = op.infer(meta);
  std::vector<Tensor> out;
  bool all_views = true;
  for (size_t k = 0; k < out_meta.size(); ++k) {
    const Op::ViewOf v = op.view_of(static_cast<int>(k), meta);
    if (v.input >= 0) {
      out.push_back(in.at(static_cast<size_t>(v.input))
                        .carve(static_cast<size_t>(v.offset) * dtype_size(out_meta[k].dtype), out_meta[k].shape,
                               out_meta[k].dtype));
    } else {
      all_views = false;
      out.push_back(Tensor::empty(out_meta[k].shape, out_meta[k].dtype, device_ctx));
    }
  }
  if (!all_views) {
    KernelContext ctx;
    ctx.pool = pool;
    ctx.rng_seed = rng_seed;
    ctx.rng_offset = rng_offset;
    ctx.device = device;
    ctx.device_ctx = device_ctx;
    KernelRegistry::builtin().get(op.name(), device)(op, ctx, in, out);
  }
  return out;
}

}  // namespace xfr
