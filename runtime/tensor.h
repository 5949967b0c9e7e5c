// Tensor: a shape, strides and dtype over shared storage. Views (reshape of contiguous data, transpose,
// permute, slice) share storage; copies are explicit (contiguous(), clone(), to()).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/device.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/shape.h"

namespace xfr {

// Owned or borrowed bytes on a device. Borrowed storage (a view into a flat parameter buffer or a
// memory-plan arena) keeps its owner alive through `owner`.
class DeviceContext;

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::shared_ptr<void> owner;  // what frees `data` (null for borrowed storage that the caller keeps alive)
  DeviceContext* context = nullptr;  // device storage: the context that allocated it (kept alive by owner)
};

class Tensor {
 public:
  Tensor() = default;

  // ---- construction -------------------------------------------------------------------------------
  // Host tensors; a CUDA device needs a context to allocate from (the overloads below).
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  // Device tensors from `ctx`'s allocator; a null ctx means the host.
  static Tensor empty(const Shape& shape, DType dtype, DeviceContext* ctx);
  static Tensor zeros(const Shape& shape, DType dtype, DeviceContext* ctx);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  // A tensor over memory owned elsewhere; `keep_alive` (may be null) is held as long as the tensor.
  // Device memory also needs the context it belongs to (its stream orders copies).
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keep_alive,
                     DeviceContext* ctx = nullptr);
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    XF_CHECK(static_cast<int64_t>(values.size()) == numel_of(shape), "tensor", "from_vector: ", values.size(),
             " values for shape ", shape_str(shape));
    Tensor t = empty(shape, dtype_of<T>());
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
  }

  // ---- metadata ------------------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  size_t rank() const { return shape_.size(); }
  int64_t dim(int64_t axis) const;  // negative axes count from the end
  int64_t numel() const { return numel_of(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  int64_t offset() const { return offset_; }  // in elements
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  // Rows of the last axis, each packed, evenly spaced (every other axis folds into the rows): the elements from one
  // row's start to the next (the last axis' size for a contiguous tensor; a GEMM's leading dimension), else -1.
  // Rank 0 and 1: the size (one row).
  int64_t row_stride() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  DeviceContext* context() const { return storage_ ? storage_->context : nullptr; }  // null on the host
  std::string desc() const;  // "f32(2, 3) cpu"

  // ---- data ----------------------------------------------------------------------------------------
  void* raw_data() const;
  template <class T>
  T* data() const {
    XF_CHECK(dtype_of<T>() == dtype_, "tensor", "data<", dtype_name(dtype_of<T>()), ">() on a ", dtype_name(dtype_),
             " tensor");
    return static_cast<T*>(raw_data());
  }

  // ---- views (share storage) ----------------------------------------------------------------------
  Tensor view(Shape shape) const;  // contiguous only; one -1 is inferred
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor slice(int64_t axis, int64_t start, int64_t end) const;
  // A contiguous tensor over this one's storage starting `byte_offset` bytes into it (for arenas and
  // flat buffers); byte_offset must be a multiple of dtype's size and the extent must fit.
  Tensor carve(size_t byte_offset, const Shape& shape, DType dtype) const;

  // ---- copies ---------------------------------------------------------------------------------------
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;
  Tensor to(DType dtype) const;  // converting copy (round to nearest even for 16-bit floats)
  Tensor to_host() const;        // itself when already on the host
  Tensor to_device(DeviceContext* ctx) const;  // a copy on ctx's device (the host when ctx is null)
  // Same shape; any strides; converts dtype; any pair of devices (a copy that involves the host waits
  // for the device).
  void copy_from(const Tensor& src);
  void fill(double value);

  // Element values as double, in row-major order (for tests and printing).
  std::vector<double> to_doubles() const;
  double item() const;  // the one element of a 1-element tensor

 private:
  void copy_device(const Tensor& src);
  Tensor gather_to_host() const;  // a strided device tensor, contiguous on the host
  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
};

}  // namespace xfr
