#include "runtime/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "runtime/allocator.h"
#include "runtime/device_context.h"
#include "runtime/dispatch.h"

namespace xfr {

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (auto d : shape) XF_CHECK(d >= 0, "tensor", "negative dimension in shape ", shape_str(shape));
  XF_CHECK(device.is_cpu(), "tensor", "a ", device.str(),
           " tensor is allocated from a DeviceContext (Tensor::empty(shape, dtype, ctx))");
  const size_t bytes = static_cast<size_t>(numel_of(shape)) * dtype_size(dtype);
  void* p = cpu_allocate(bytes);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(Storage{p, bytes, device, std::shared_ptr<void>(p, cpu_free)});
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, DeviceContext* ctx) {
  if (!ctx) return empty(shape, dtype, Device::cpu());
  for (auto d : shape) XF_CHECK(d >= 0, "tensor", "negative dimension in shape ", shape_str(shape));
  const size_t bytes = static_cast<size_t>(numel_of(shape)) * dtype_size(dtype);
  std::shared_ptr<void> block = ctx->allocate(bytes);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(Storage{block.get(), bytes, ctx->device(), block, ctx});
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, DeviceContext* ctx) {
  if (!ctx) return zeros(shape, dtype, Device::cpu());
  Tensor t = empty(shape, dtype, ctx);
  ctx->memset_zero(t.raw_data(), t.nbytes());
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(value);
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keep_alive,
                    DeviceContext* ctx) {
  XF_CHECK(device.is_cpu() || ctx != nullptr, "tensor", "wrapping ", device.str(), " memory needs its context");
  Tensor t;
  const size_t bytes = static_cast<size_t>(numel_of(shape)) * dtype_size(dtype);
  t.storage_ = std::make_shared<Storage>(Storage{data, bytes, device, std::move(keep_alive), ctx});
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::dim(int64_t axis) const { return shape_[normalize_axis(axis, rank(), "tensor")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

int64_t Tensor::row_stride() const {
  const size_t r = shape_.size();
  if (r < 2) return r == 0 ? 1 : shape_[0];
  if (shape_[r - 1] != 1 && strides_[r - 1] != 1) return -1;
  const int64_t ld = strides_[r - 2];
  int64_t expected = ld * shape_[r - 2];  // where the next outer axis' step must land
  for (size_t i = r - 2; i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) return -1;
    expected *= shape_[i];
  }
  return ld;
}

std::string Tensor::desc() const {
  return str_cat(dtype_name(dtype_), shape_str(shape_), " ", device().str());
}

void* Tensor::raw_data() const {
  XF_CHECK(storage_ != nullptr, "tensor", "access to an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

Tensor Tensor::view(Shape shape) const {
  XF_CHECK(is_contiguous(), "view", "view of a non-contiguous tensor ", desc(), "; call contiguous() first");
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      XF_CHECK(infer < 0, "view", "more than one -1 in ", shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    XF_CHECK(known > 0 && numel() % known == 0, "view", "cannot infer -1 in ", shape_str(shape), " for ", desc());
    shape[infer] = numel() / known;
  }
  XF_CHECK(numel_of(shape) == numel(), "view", "shape ", shape_str(shape), " does not match ", desc());
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  const int ia = normalize_axis(a, rank(), "transpose"), ib = normalize_axis(b, rank(), "transpose");
  Tensor t = *this;
  std::swap(t.shape_[ia], t.shape_[ib]);
  std::swap(t.strides_[ia], t.strides_[ib]);
  return t;
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  XF_CHECK(order.size() == rank(), "permute", "order has ", order.size(), " axes for a rank-", rank(), " tensor");
  std::vector<bool> seen(rank(), false);
  Tensor t = *this;
  for (size_t i = 0; i < order.size(); ++i) {
    const int ax = normalize_axis(order[i], rank(), "permute");
    XF_CHECK(!seen[ax], "permute", "axis ", ax, " repeated");
    seen[ax] = true;
    t.shape_[i] = shape_[ax];
    t.strides_[i] = strides_[ax];
  }
  return t;
}

Tensor Tensor::slice(int64_t axis, int64_t start, int64_t end) const {
  const int ax = normalize_axis(axis, rank(), "slice");
  XF_CHECK(0 <= start && start <= end && end <= shape_[ax], "slice", "range [", start, ", ", end,
           ") out of bounds for axis ", ax, " of ", desc());
  Tensor t = *this;
  t.offset_ += start * strides_[ax];
  t.shape_[ax] = end - start;
  return t;
}

Tensor Tensor::carve(size_t byte_offset, const Shape& shape, DType dtype) const {
  XF_CHECK(storage_ != nullptr, "tensor", "carve from an undefined tensor");
  const size_t esize = dtype_size(dtype);
  const size_t base = static_cast<size_t>(offset_) * dtype_size(dtype_) + byte_offset;
  XF_CHECK(base % esize == 0, "tensor", "carve at byte ", base, " is not aligned for ", dtype_name(dtype));
  XF_CHECK(base + static_cast<size_t>(numel_of(shape)) * esize <= storage_->bytes, "tensor", "carve of ",
           shape_str(shape), " at byte ", base, " leaves the ", storage_->bytes, "-byte storage");
  Tensor t;
  t.storage_ = storage_;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.offset_ = static_cast<int64_t>(base / esize);
  return t;
}

namespace {

// Calls f(dst_index, src_element_offset) for each element of `src` in row-major order.
template <class F>
void for_each_strided(const Tensor& src, F&& f) {
  const int64_t n = src.numel();
  if (n == 0) return;
  const size_t r = src.rank();
  if (src.is_contiguous()) {
    for (int64_t i = 0; i < n; ++i) f(i, src.offset() + i);
    return;
  }
  std::vector<int64_t> idx(r, 0);
  int64_t off = src.offset();
  for (int64_t i = 0; i < n; ++i) {
    f(i, off);
    for (size_t d = r; d-- > 0;) {
      if (++idx[d] < src.shape()[d]) {
        off += src.strides()[d];
        break;
      }
      off -= (src.shape()[d] - 1) * src.strides()[d];
      idx[d] = 0;
    }
  }
}

template <class S, class D>
D convert(S v) {
  if constexpr (std::is_same_v<S, D>) {
    return v;
  } else {
    return from_double<D>(to_double<S>(v));
  }
}

}  // namespace

void Tensor::copy_from(const Tensor& src) {
  XF_CHECK(src.shape() == shape_, "copy", "shape ", shape_str(src.shape()), " into ", desc());
  if (numel() == 0) return;
  if (!device().is_cpu() || !src.device().is_cpu()) {
    copy_device(src);
    return;
  }
  if (src.dtype() == dtype_ && src.is_contiguous() && is_contiguous()) {
    std::memmove(raw_data(), src.raw_data(), nbytes());
    return;
  }
  Tensor dst_c = is_contiguous() ? *this : Tensor::empty(shape_, dtype_);
  XF_DISPATCH_ALL(src.dtype(), "copy", S, {
    const S* s = static_cast<const S*>(src.storage()->data);
    XF_DISPATCH_ALL(dtype_, "copy", D, {
      D* d = dst_c.data<D>();
      for_each_strided(src, [&](int64_t i, int64_t o) { d[i] = convert<S, D>(s[o]); });
    });
  });
  if (!is_contiguous()) {
    // scatter the contiguous result back into this strided view
    XF_DISPATCH_ALL(dtype_, "copy", D, {
      const D* c = dst_c.data<D>();
      D* base = static_cast<D*>(storage_->data);
      for_each_strided(*this, [&](int64_t i, int64_t o) { base[o] = c[i]; });
    });
  }
}

// A copy with a device on one side or both. Contiguous same-dtype copies and device-side float
// conversions go straight through the context; anything else (strides, integer conversions) is staged
// through a contiguous host tensor: correct for every case, fast for the ones the runtime uses.
void Tensor::copy_device(const Tensor& src) {
  DeviceContext* dctx = context();
  DeviceContext* sctx = src.context();
  const bool both_contig = is_contiguous() && src.is_contiguous();
  auto is_dev_float = [](DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; };
  if (both_contig && dctx && sctx && dctx->device() == sctx->device()) {
    if (src.dtype() == dtype_) {
      dctx->copy(raw_data(), src.raw_data(), nbytes(), CopyKind::device_to_device);
      return;
    }
    if (is_dev_float(src.dtype()) && is_dev_float(dtype_)) {
      dctx->convert(raw_data(), dtype_, src.raw_data(), src.dtype(), static_cast<size_t>(numel()));
      return;
    }
  }
  if (both_contig && src.dtype() == dtype_ && dctx && !sctx) {  // host -> device
    dctx->copy(raw_data(), src.raw_data(), nbytes(), CopyKind::host_to_device);
    dctx->synchronize();  // the host tensor may be freed as soon as we return
    return;
  }
  if (both_contig && src.dtype() == dtype_ && !dctx && sctx) {  // device -> host
    sctx->copy(raw_data(), src.raw_data(), nbytes(), CopyKind::device_to_host);
    sctx->synchronize();
    return;
  }
  // Staged: bring src to the host as a contiguous tensor of our dtype, then place it.
  Tensor host_src = src;
  if (sctx) {
    host_src = Tensor::empty(src.shape(), src.dtype());
    Tensor src_c = src.is_contiguous() ? src : src.contiguous();
    host_src.copy_from(src_c);
  }
  if (!dctx) {
    copy_from(host_src);
    return;
  }
  Tensor host_dst = Tensor::empty(shape_, dtype_);
  host_dst.copy_from(host_src);
  if (is_contiguous()) {
    copy_from(host_dst);
  } else {
    XF_CHECK(false, "copy", "writing into a strided view of device memory (", desc(), ") is not supported");
  }
}

// A strided device tensor gathered into a contiguous host tensor: downloads only the bytes the view spans
// (from its first to its last element; strides are non-negative), then gathers on the host.
Tensor Tensor::gather_to_host() const {
  Tensor h = Tensor::empty(shape_, dtype_);
  if (numel() == 0) return h;
  int64_t last = 0;  // element offset of the view's last element, relative to its first
  for (size_t d = 0; d < rank(); ++d) last += (shape_[d] - 1) * strides_[d];
  const size_t es = dtype_size(dtype_);
  std::vector<unsigned char> span(static_cast<size_t>(last + 1) * es);
  context()->copy(span.data(), raw_data(), span.size(), CopyKind::device_to_host);
  context()->synchronize();
  Tensor rel = *this;  // the same view, its offsets relative to the downloaded span
  rel.offset_ = 0;
  XF_DISPATCH_ALL(dtype_, "contiguous", T, {
    const T* base = reinterpret_cast<const T*>(span.data());
    T* d = h.data<T>();
    for_each_strided(rel, [&](int64_t i, int64_t o) { d[i] = base[o]; });
  });
  return h;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  if (context()) {  // a device tensor: gather on the host, then upload (slow path; ops are contiguous)
    Tensor t = empty(shape_, dtype_, context());
    t.copy_from(gather_to_host());
    return t;
  }
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, context());
  t.copy_from(is_contiguous() || !context() ? *this : contiguous());
  return t;
}

Tensor Tensor::to(DType dtype) const {
  Tensor t = empty(shape_, dtype, context());
  t.copy_from(is_contiguous() || !context() ? *this : contiguous());
  return t;
}

Tensor Tensor::to_host() const {
  if (!context()) return *this;
  if (!is_contiguous()) return gather_to_host();
  Tensor t = empty(shape_, dtype_, Device::cpu());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to_device(DeviceContext* ctx) const {
  if (!ctx) return to_host();
  Tensor t = empty(shape_, dtype_, ctx);
  t.copy_from(is_contiguous() || !context() ? *this : contiguous());
  return t;
}

void Tensor::fill(double value) {
  if (context()) {
    XF_CHECK(is_contiguous(), "fill", "fill of a strided view of device memory (", desc(), ")");
    if (value == 0.0) {
      context()->memset_zero(raw_data(), nbytes());
      return;
    }
    Tensor h = Tensor::full(shape_, value, dtype_);
    copy_from(h);
    return;
  }
  XF_DISPATCH_ALL(dtype_, "fill", T, {
    const T v = from_double<T>(value);
    T* base = static_cast<T*>(storage_->data);
    for_each_strided(*this, [&](int64_t, int64_t o) { base[o] = v; });
  });
}

std::vector<double> Tensor::to_doubles() const {
  if (context()) return to_host().to_doubles();
  std::vector<double> out(static_cast<size_t>(numel()));
  XF_DISPATCH_ALL(dtype_, "to_doubles", T, {
    const T* base = static_cast<const T*>(storage_->data);
    for_each_strided(*this, [&](int64_t i, int64_t o) { out[i] = to_double<T>(base[o]); });
  });
  return out;
}

double Tensor::item() const {
  XF_CHECK(numel() == 1, "item", "item() of ", desc(), " which has ", numel(), " elements");
  return to_doubles()[0];
}

}  // namespace xfr
