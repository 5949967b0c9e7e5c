#include "runtime/param_store.h"

#include <cstring>
#include <unordered_map>

namespace xfr {

// 16 f32 = 64 bytes: every parameter starts on a cache line, which vector loads and CUDA's 16-byte
// accesses both want.
constexpr size_t kParamAlignElems = 16;

ParamStore::ParamStore(const Graph& g, DeviceContext* ctx) {
  const auto aligned = [](size_t n) { return (n + kParamAlignElems - 1) / kParamAlignElems * kParamAlignElems; };
  std::unordered_map<int, size_t> slot_of;  // parameter value id -> its slot
  for (int i = 0; i < g.num_values(); ++i) {
    const auto& v = g.value(i);
    if (v.kind != ValueKind::param) continue;
    ParamSlot s;
    s.name = v.name;
    s.kind = v.param_kind;
    s.numel = static_cast<size_t>(numel_of(v.meta.shape));
    s.stream_offset = flat_size_;
    flat_size_ += aligned(s.numel);
    slot_of[i] = slots_.size();
    index_[s.name] = slots_.size();
    slots_.push_back(s);
    shapes_.push_back(v.meta.shape);
  }
  // Storage: declaration order, a store_adjacent group placed whole where its first member comes.
  std::vector<const std::vector<int>*> group_of(slots_.size(), nullptr);
  for (const auto& group : g.adjacent_params())
    for (int id : group) group_of[slot_of.at(id)] = &group;
  std::vector<bool> placed(slots_.size(), false);
  size_t next = 0;
  const auto place = [&](size_t k) {
    slots_[k].offset = next;
    next += aligned(slots_[k].numel);
    placed[k] = true;
  };
  for (size_t k = 0; k < slots_.size(); ++k) {
    if (placed[k]) continue;
    if (group_of[k])
      for (int id : *group_of[k]) place(slot_of.at(id));
    else
      place(k);
  }
  params_ = Tensor::zeros({static_cast<int64_t>(flat_size_)}, DType::f32, ctx);
  grads_ = Tensor::zeros({static_cast<int64_t>(flat_size_)}, DType::f32, ctx);
}

ParamStore::ParamStore(const ParamStore& other, DeviceContext* ctx)
    : slots_(other.slots_), shapes_(other.shapes_), index_(other.index_), flat_size_(other.flat_size_) {
  params_ = Tensor::empty({static_cast<int64_t>(flat_size_)}, DType::f32, ctx);
  grads_ = Tensor::zeros({static_cast<int64_t>(flat_size_)}, DType::f32, ctx);
  params_.copy_from(other.params_);
}

void ParamStore::copy_params_from(const ParamStore& other) {
  XF_CHECK(other.flat_size_ == flat_size_ && other.slots_.size() == slots_.size(), "param_store",
           "copy between stores of different layouts");
  params_.copy_from(other.params_);
}

const ParamSlot& ParamStore::slot(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error("param_store", "no parameter named '" + name + "'");
  return slots_[it->second];
}

Tensor ParamStore::param(const std::string& name) const {
  const auto& s = slot(name);
  return params_.slice(0, static_cast<int64_t>(s.offset), static_cast<int64_t>(s.offset + s.numel))
      .view(shapes_[index_.at(name)]);
}

Tensor ParamStore::grad(const std::string& name) const {
  const auto& s = slot(name);
  return grads_.slice(0, static_cast<int64_t>(s.offset), static_cast<int64_t>(s.offset + s.numel))
      .view(shapes_[index_.at(name)]);
}

void ParamStore::zero_grads() {
  if (grads_.context()) grads_.fill(0.0);  // a stream-ordered memset on the device
  else std::memset(grads_.raw_data(), 0, grads_.nbytes());
}

size_t ParamStore::num_params() const {
  size_t n = 0;
  for (const auto& s : slots_) n += s.numel;
  return n;
}

}  // namespace xfr
