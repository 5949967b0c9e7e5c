// Parameters and their gradients as two flat f32 buffers with one layout (ParamSlot), so the
// optimizer, gradient clipping and (later) all-reduce are single passes. Executors compiled from
// graphs that declare the same parameter names share one store.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/graph.h"
#include "runtime/param.h"
#include "runtime/tensor.h"

namespace xfr {

class ParamStore {
 public:
  // Lays out every parameter of `g`, in declaration order but for the groups of Graph::store_adjacent (a group is
  // placed whole where its first member is declared), each 64-byte aligned. slots() are in declaration order. Both
  // buffers start zeroed, on the host (ctx null) or on ctx's device.
  explicit ParamStore(const Graph& g, DeviceContext* ctx = nullptr);
  // The same layout on another device (or the host), with the parameters copied; gradients zeroed.
  ParamStore(const ParamStore& other, DeviceContext* ctx);

  const std::vector<ParamSlot>& slots() const { return slots_; }
  size_t flat_size() const { return flat_size_; }  // elements, padding included
  Device device() const { return params_.device(); }
  DeviceContext* context() const { return params_.context(); }
  // Copies every parameter from `other` (same layout, any device).
  void copy_params_from(const ParamStore& other);
  float* params() const { return params_.data<float>(); }  // host or device pointer, as device() says
  float* grads() const { return grads_.data<float>(); }
  const Tensor& params_flat() const { return params_; }
  const Tensor& grads_flat() const { return grads_; }

  const ParamSlot& slot(const std::string& name) const;  // throws when absent
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  Tensor param(const std::string& name) const;  // a view into the flat parameter buffer
  Tensor grad(const std::string& name) const;   // a view into the flat gradient buffer
  Shape shape(const std::string& name) const { return shapes_.at(index_.at(name)); }
  void zero_grads();
  size_t num_params() const;  // real elements, padding excluded

 private:
  std::vector<ParamSlot> slots_;
  std::vector<Shape> shapes_;
  std::unordered_map<std::string, size_t> index_;
  size_t flat_size_ = 0;
  Tensor params_, grads_;
};

}  // namespace xfr
