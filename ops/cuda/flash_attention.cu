// CUDA backend of ops/flash_attention.h (flash_attention, flash_attention_backward): FlashAttention-2 style,
// online softmax, never an Sq x Sk buffer; the backward recomputes P from the saved log-sum-exp.
//   ops/cuda/flash_attention_params.cuh   parameters, sequences (varlen), masks, dropout: shared device code
//   ops/cuda/flash_attention_mask.h       the tensor-core kernels' mask and the features of their instantiations
//   ops/cuda/flash_attention_tc.cuh       bf16 / f16 on tensor cores (forward, dQ, dK/dV, dbias; instantiated by
//                                         flash_attention_tc_forward.cu and flash_attention_tc_backward_*.cu)
//   ops/cuda/flash_attention_sm90.cu      the forward on Hopper (wgmma, TMA), where it applies (sm90_refusal)
//   ops/cuda/flash_attention_sm90_backward.cu   the backward on Hopper, where the same rule applies
//   ops/cuda/flash_attention_f32.cu       f32, plain FMA
//   this file                             the Delta kernel, parameter set-up, the plain launchers, registration
//
// Dropout: the factor of element (b, h, i, j) is keep_scale or 0 from Philox stream element start + e (e as
// ops/flash_attention.h defines it, varlen included), the CPU kernel's numbers, in every kernel.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "ops/cuda/attention_dispatch.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/device/reduce.cuh"
#include "ops/cuda/flash_attention_launch.h"
#include "ops/cuda/flash_attention_params.cuh"
#include "ops/dropout.h"
#include "ops/flash_attention.h"

namespace xfr::cuda {

namespace {

using fa::Params;

// ---- backward: Delta ----------------------------------------------------------------------------------
// out, dout: (B, H, Sq, D) T (strides p.os; varlen (H, Tq, D) logical); dlse: lse's shape f32 or null -> delta:
// lse's shape f32. A warp per row of lse (row (b H + h) Sq + i, or h Tq + t); 256 threads.
template <class T>
__global__ void __launch_bounds__(256) delta_kernel(Params p, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  // Varlen rows are h Tq + t with a batch stride of 0, so the same decoding as (B = 1, Sq = Tq) holds.
  const int64_t bh = row / p.Sq, off = p.o_head(bh / p.H, bh % p.H) + (row % p.Sq) * p.os.seq;
  const T* o = static_cast<const T*>(p.out) + off;
  const T* d = static_cast<const T*>(p.dout) + off;
  float acc = 0.f;
  for (int c = lane; c < p.D; c += 32) acc += dev::to_float(o[c]) * dev::to_float(d[c]);
  acc = dev::warp_sum(acc);
  if (lane == 0) p.delta[row] = acc - (p.dlse ? p.dlse[row] : 0.f);
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Whether every row of every tensor starts 16 bytes after an aligned base: D and all strides multiples of 8
// elements (16 bytes of bf16/f16; the f32 kernels do not use vec).
bool strides_vec(const Params& p) {
  const int64_t all = p.D | p.qs.batch | p.qs.head | p.qs.seq | p.ks.batch | p.ks.head | p.ks.seq | p.os.batch |
                      p.os.head | p.os.seq;
  return all % 8 == 0;
}

Params make_params(const FlashAttentionArgs& a) {
  const char* op = "flash_attention";
  XF_CHECK(a.D >= 1 && a.D <= 256, op, "the CUDA kernels support head dims 1 to 256, got ", a.D);
  XF_CHECK(a.Hk > 0 && a.H % a.Hk == 0, op, "H ", a.H, " is not a multiple of Hk ", a.Hk);
  XF_CHECK(a.B * a.H <= INT32_MAX && a.Sq <= INT32_MAX && a.Sk <= INT32_MAX, op, "sizes too large");
  XF_CHECK(a.q_strides.seq > 0 && a.k_strides.seq > 0, op,
           "FlashAttentionArgs needs the element strides of q and k (head_strides() for contiguous tensors)");
  const bool varlen = a.cu_seqlens_q != nullptr;
  XF_CHECK(varlen == (a.cu_seqlens_k != nullptr), op, "packed sequences need both cu_seqlens_q and cu_seqlens_k");
  XF_CHECK(!(varlen && a.bias), op, "a bias has no meaning for packed sequences (varlen)");
  // Grid y extents: 64-row tiles of the query and key axes.
  const int64_t ty = varlen ? std::max(a.Sq, a.Sk) / 64 + a.B : (std::max(a.Sq, a.Sk) + 63) / 64;
  XF_CHECK(ty <= 65535, op, "Sq ", a.Sq, " or Sk ", a.Sk, " has more than 65535 tiles of 64 rows", varlen ? " (plus one per sequence)" : "");
  XF_CHECK(a.window_left >= -1 && a.window_right >= -1 && (!a.causal || a.window_right <= 0), op,
           "window (", a.window_left, ", ", a.window_right, ") with causal=", a.causal, " is not a valid band");
  Params p;
  p.B = static_cast<int>(a.B);
  p.H = static_cast<int>(a.H);
  p.Hk = static_cast<int>(a.Hk);
  p.G = static_cast<int>(a.H / a.Hk);
  p.Sq = static_cast<int>(a.Sq);
  p.Sk = static_cast<int>(a.Sk);
  p.D = static_cast<int>(a.D);
  p.qs = a.q_strides;
  p.ks = a.k_strides;
  p.os = a.out_strides();
  p.varlen = varlen;
  p.cu_q = a.cu_seqlens_q;
  p.cu_k = a.cu_seqlens_k;
  p.cu64 = a.offsets_i64;
  p.lse_b = varlen ? 0 : a.H * a.Sq;
  p.lse_h = a.Sq;
  p.band = attention_band(a);
  p.bias = a.bias;
  if (a.bias) {
    XF_CHECK((a.bias_batch == 1 || a.bias_batch == a.B) && (a.bias_heads == 1 || a.bias_heads == a.H), op,
             "the bias's extents (", a.bias_batch, ", ", a.bias_heads, ") must be 1 or (B, H) = (", a.B, ", ", a.H, ")");
    p.Bb = static_cast<int>(a.bias_batch);
    p.Hb = static_cast<int>(a.bias_heads);
    p.bias_h = p.Hb == 1 ? 0 : a.Sq * a.Sk;
    p.bias_b = p.Bb == 1 ? 0 : a.bias_heads * a.Sq * a.Sk;
    XF_CHECK((a.Sq + 63) / 64 <= 65535 && (a.Sk + 63) / 64 <= 65535, op, "Sq ", a.Sq, " or Sk ", a.Sk,
             " has more than 65535 tiles of 64 for the dbias grid");
  }
  p.scale = static_cast<float>(a.scale);
  p.scale_log2 = static_cast<float>(a.scale * 1.4426950408889634);
  p.deterministic = a.deterministic;
  p.tile_counter = a.tile_counter;
  p.tile_counter_words = a.tile_counter_words;
  p.forward_workspace = a.forward_workspace;
  if (a.dropout > 0.0) {
    p.drop.on = true;
    p.drop.threshold = dropout_keep_threshold(a.dropout);
    p.drop.keep_scale = static_cast<float>(1.0 / (1.0 - a.dropout));
    p.drop.seed = a.seed;
    p.drop.offset = a.offset;
    p.drop.offset_device = a.offset_device;
  }
  return p;
}

// The forward's parameters: the shape's, the tensors (lse_out left to the caller) and whether the asynchronous-copy
// (and TMA) path can address them.
Params forward_params(const FlashAttentionArgs& a, const void* q, const void* k, const void* v, void* out) {
  Params p = make_params(a);
  p.q = q;
  p.k = k;
  p.v = v;
  p.o = out;
  p.vec = strides_vec(p) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
  return p;
}

// The backward's parameters: the shape's, the tensors, Delta's workspace and whether the asynchronous-copy (and
// TMA) path can address them.
Params backward_params(const FlashAttentionArgs& a, const void* q, const void* k, const void* v, const void* out,
                       const void* dout, const float* lse, const float* dlse, void* dq, void* dk, void* dv,
                       void* dbias, void* workspace) {
  Params p = make_params(a);
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.dout = dout;
  p.lse = lse;
  p.dlse = dlse;
  p.delta = static_cast<float*>(workspace);
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.dbias = dbias;
  // out too: the Hopper backward's pre-kernel reads it (and dout) in 16-byte packs.
  p.vec = strides_vec(p) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out) && aligned16(dout) &&
          aligned16(dq) && aligned16(dk) && aligned16(dv);
  return p;
}

// The launcher arguments of an op's tensors: in[0..2] q, k, v (in[0] qkv when packed); bias, cu_seqlens at the op's
// indices.
FlashAttentionArgs args_of(const FlashAttentionAttrs& attrs, const std::vector<Tensor>& in, int64_t bias_index,
                           int64_t cu_index, const KernelContext& ctx) {
  auto meta = [&](int64_t i) { return TensorMeta{in[static_cast<size_t>(i)].shape(), in[static_cast<size_t>(i)].dtype()}; };
  const TensorMeta bias = attrs.has_bias ? meta(bias_index) : TensorMeta{};
  const TensorMeta cu_q = attrs.varlen ? meta(cu_index) : TensorMeta{}, cu_k = attrs.varlen ? meta(cu_index + 1) : TensorMeta{};
  const int64_t k_index = attrs.qkv_packed ? 0 : 1, v_index = attrs.qkv_packed ? 0 : 2;
  const FlashAttentionShape s = flash_attention_shape("flash_attention", attrs, meta(0), meta(k_index), meta(v_index),
                                                      attrs.has_bias ? &bias : nullptr, attrs.varlen ? &cu_q : nullptr,
                                                      attrs.varlen ? &cu_k : nullptr);
  FlashAttentionArgs a;
  a.dtype = in[0].dtype();
  a.B = s.B;
  a.H = s.H;
  a.Sq = s.Sq;
  a.D = s.D;
  a.Hk = s.Hk;
  a.Sk = s.Sk;
  a.q_strides = s.q;
  a.k_strides = s.k;
  a.o_strides = s.o;
  a.scale = attrs.scale;
  a.causal = attrs.causal;
  a.alignment = attrs.alignment;
  a.window_left = attrs.window_left;
  a.window_right = attrs.window_right;
  a.dropout = attrs.dropout;
  a.seed = ctx.rng_seed;
  a.offset = ctx.rng_offset;
  a.offset_device = ctx.rng_offset_device;
  if (attrs.has_bias) {
    a.bias = in[static_cast<size_t>(bias_index)].raw_data();
    a.bias_batch = bias.shape[0];
    a.bias_heads = bias.shape[1];
  }
  if (attrs.varlen) {
    a.cu_seqlens_q = in[static_cast<size_t>(cu_index)].raw_data();
    a.cu_seqlens_k = in[static_cast<size_t>(cu_index + 1)].raw_data();
    a.offsets_i64 = cu_q.dtype == DType::i64;
  }
  return a;
}

// The q, k, v pointers of a node (or of its gradients dq, dk, dv): three tensors, or the parts of one packed
// qkv (dqkv) at the shape's element offsets.
struct QkvPointers {
  void *q, *k, *v;
};
QkvPointers qkv_pointers(const FlashAttentionAttrs& attrs, const std::vector<Tensor>& t) {
  if (!attrs.qkv_packed) return {t[0].raw_data(), t[1].raw_data(), t[2].raw_data()};
  const Shape& x = t[0].shape();  // (B, S, 3, H, D) or (T, 3, H, D)
  const int64_t HD = x[x.size() - 2] * x[x.size() - 1];
  char* base = static_cast<char*>(t[0].raw_data());
  const int64_t bytes = HD * static_cast<int64_t>(dtype_size(t[0].dtype()));
  return {base, base + bytes, base + 2 * bytes};
}

// in: q, k, v (or qkv), [bias], [cu_seqlens_q, cu_seqlens_k]; out: out, lse (f32)
void forward_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                       const std::vector<Tensor>& out) {
  const auto& op = static_cast<const FlashAttentionOp&>(op_);
  const QkvPointers x = qkv_pointers(op.a, in);
  // The dispatcher (ops/cuda/attention_dispatch.h) runs it on cuDNN or on the native kernels.
  // lse is optional (FlashAttentionOp::output_optional): an undefined tensor when nothing reads it.
  attention_forward(context_of(ctx), args_of(op.a, in, op.a.bias_input(), op.a.cu_input(), ctx), x.q, x.k, x.v,
                    out[0].raw_data(), out[1].defined() ? static_cast<float*>(out[1].raw_data()) : nullptr);
}

// in: q, k, v (or qkv), out, dout, lse, [dlse], [bias], [offsets]; out: dq, dk, dv (or dqkv), [dbias]
void backward_kernel_fn(const Op& op_, const KernelContext& ctx, const std::vector<Tensor>& in,
                        const std::vector<Tensor>& out) {
  const auto& op = static_cast<const FlashAttentionBackwardOp&>(op_);
  const FlashAttentionArgs a = args_of(op.a, in, op.bias_input(), op.cu_input(), ctx);
  const QkvPointers x = qkv_pointers(op.a, in), dx = qkv_pointers(op.a, out);
  const auto at = [&](int64_t i) { return in[static_cast<size_t>(i)].raw_data(); };
  attention_backward(context_of(ctx), a, x.q, x.k, x.v, at(op.out_input()), at(op.dout_input()),
                     static_cast<const float*>(at(op.lse_input())),
                     op.has_dlse ? static_cast<const float*>(at(op.dlse_input())) : nullptr, dx.q, dx.k, dx.v,
                     op.bias_grad ? out[static_cast<size_t>(op.dbias_output())].raw_data() : nullptr);
}

}  // namespace

void launch_flash_attention_forward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                    void* out, float* lse, CUstream_st* stream) {
  Params p = forward_params(a, q, k, v, out);
  if (p.B * p.H == 0 || p.Sq == 0) return;
  p.lse_out = lse;
  if (a.dtype == DType::f32) {
    fa::launch_f32_forward(p, stream);
  } else if (a.dtype == DType::bf16 || a.dtype == DType::f16) {
    if (fa::sm90_refusal(p, a.dtype).empty()) {
      fa::launch_sm90_forward(p, a.dtype, stream);
    } else {
      fa::launch_tc_forward(p, a.dtype, stream);
    }
  } else {
    throw Error("flash_attention", str_cat("the CUDA kernels compute in bf16, f16 or f32, not ", dtype_name(a.dtype)));
  }
}

std::string flash_attention_sm90_refusal(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                         const void* out) {
  // Nothing is launched: out is only looked at (its alignment).
  return fa::sm90_refusal(forward_params(a, q, k, v, const_cast<void*>(out)), a.dtype);
}

std::string flash_attention_sm90_backward_refusal(const FlashAttentionArgs& a, const void* q, const void* k,
                                                  const void* v, const void* out, const void* dout, const void* dq,
                                                  const void* dk, const void* dv) {
  // Nothing is launched: the tensors are only looked at (their alignment).
  return fa::sm90_backward_refusal(backward_params(a, q, k, v, out, dout, nullptr, nullptr, const_cast<void*>(dq),
                                                   const_cast<void*>(dk), const_cast<void*>(dv), nullptr, nullptr),
                                   a.dtype);
}

size_t flash_attention_lse_bytes(const FlashAttentionArgs& a) {
  const int64_t rows = (a.cu_seqlens_q ? 1 : a.B) * a.H * a.Sq;  // lse's rows
  return static_cast<size_t>(rows) * sizeof(float);
}

size_t flash_attention_forward_workspace_bytes(const FlashAttentionArgs& a) {
  if (a.dtype == DType::f32 || a.B * a.H == 0) return 0;
  const Params p = make_params(a);
  return fa::sm90_problem_refusal(p, a.dtype).empty() ? fa::sm90_forward_workspace_bytes(p) : 0;
}

size_t flash_attention_backward_workspace_bytes(const FlashAttentionArgs& a) {
  // The mma.sync kernels' Delta has lse's shape; the Hopper backward's Delta and lse2 are padded to its query tiles.
  // Sized for the Hopper one whenever the problem is in its reach (the tensors' alignment and the device are not
  // known here), a few KB more than the other needs.
  const size_t plain = flash_attention_lse_bytes(a);
  if (a.dtype == DType::f32 || a.B * a.H == 0) return plain;
  const Params p = make_params(a);
  return fa::sm90_backward_problem_refusal(p, a.dtype).empty() ? std::max(plain, fa::sm90_backward_workspace_bytes(p))
                                                                : plain;
}

void launch_flash_attention_backward(const FlashAttentionArgs& a, const void* q, const void* k, const void* v,
                                     const void* out, const void* dout, const float* lse, const float* dlse,
                                     void* dq, void* dk, void* dv, void* dbias, void* workspace, CUstream_st* stream) {
  XF_CHECK(!dbias || a.bias, "flash_attention_backward", "dbias needs a bias");
  const Params p = backward_params(a, q, k, v, out, dout, lse, dlse, dq, dk, dv, dbias, workspace);
  if (p.B == 0) return;  // no sequence: nothing to write (Tq = Tk = 0)
  if (a.dtype != DType::f32 && fa::sm90_backward_refusal(p, a.dtype).empty()) {
    fa::launch_sm90_backward(p, a.dtype, workspace, stream);  // its own Delta (padded, with lse2)
    return;
  }
  const int64_t rows = p.rows_lse();
  if (rows > 0) {
    XF_CUDA_DISPATCH_FLOAT(a.dtype, "flash_attention_backward", T, {
      delta_kernel<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(p, rows);
    });
    XF_CUDA_CHECK_LAUNCH("flash_attention_backward delta");
  }
  if (a.dtype == DType::f32) {
    fa::launch_f32_backward(p, stream);
  } else if (a.dtype == DType::bf16 || a.dtype == DType::f16) {
    fa::launch_tc_backward(p, a.dtype, stream);
  } else {
    throw Error("flash_attention_backward",
                str_cat("the CUDA kernels compute in bf16, f16 or f32, not ", dtype_name(a.dtype)));
  }
}

void register_flash_attention(KernelRegistry& r) {
  r.add("flash_attention", Device::Kind::cuda, forward_kernel_fn);
  r.add("flash_attention_backward", Device::Kind::cuda, backward_kernel_fn);
}

}  // namespace xfr::cuda
