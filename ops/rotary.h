// Rotary position embedding (RoFormer), in the GPT-NeoX half-split form that xFormers' RotaryEmbedding
// (components/positional_embedding/rotary.py) applies to the q and k heads:
//
//   x: (..., S, hd), hd even, h = hd / 2, position of row s: t = s + offset
//   inv_freq[i] = 1 / 10000^(2i / hd),   i < h
//   angle(t, i) = t * inv_freq[i],        emb = cat(angle, angle)  (hd wide)
//   y = x * cos(emb) + rotate_half(x) * sin(emb),   rotate_half(x) = cat(-x[h:], x[:h])
//
// i.e. each pair (x[i], x[i + h]) is rotated by angle(t, i):
//   y[i]     = x[i] cos - x[i + h] sin
//   y[i + h] = x[i + h] cos + x[i] sin
// `inverse` rotates by -angle instead; it is the transpose (and inverse) of the forward rotation, so the
// backward rule is this op again with the flag flipped, applied to dy.
//
// The cos/sin table is computed in double and rounded once to x's dtype (f32 or f64); upstream builds it in
// float32 (inv_freq and t * inv_freq rounded to float), which differs by about t * 6e-8 in the angle.
// `offset` shifts the positions (decoding with a KV cache: the new tokens sit at positions offset...).
// `seq_axis` (-2 or -3) says where S sits: -2 for heads split and permuted, x (..., S, hd); -3 for x (..., S, H, hd),
// the (B, S, H, hd) heads of the bshd attention layout (ops/flash_attention.h), where every head of a position
// gets the same rotation.
// xFormers takes the table length from k and crops it for q; for self-attention (S_q = S_k) and with the same
// offset for both, that is exactly positions offset..offset+S-1 for each, which is what this op uses.
#pragma once
#include <cstdint>
#include <string>

#include "runtime/graph.h"

namespace xfr {

// inputs (x (..., S, hd) or (..., S, H, hd)) -> outputs (y, x's shape); rank >= -seq_axis, hd even, floating point.
class RotaryOp final : public Op {
 public:
  explicit RotaryOp(int64_t offset = 0, bool inverse = false, int seq_axis = -2)
      : offset(offset), inverse(inverse), seq_axis(seq_axis) {}
  std::string name() const override { return "rotary"; }
  std::string attrs() const override;
  std::vector<TensorMeta> infer(const std::vector<TensorMeta>& in) const override;
  std::vector<Value> backward(const BackwardContext& ctx) const override;
  int64_t offset;  // position of the first row along S (>= 0)
  bool inverse;    // rotate by -angle (the backward of the forward rotation)
  int seq_axis;    // -2: x (..., S, hd); -3: x (..., S, H, hd)
};

// The sizes a rotary kernel walks: x is (Z, S, inner, hd) with inner = 1 for seq_axis -2 and H for -3.
struct RotaryDims {
  int64_t Z = 0, S = 0, inner = 1, hd = 0;
};
RotaryDims rotary_dims(const Shape& x, int seq_axis);

// The base of the frequencies: RoFormer's and xFormers' 10000 (as in the sinusoidal table).
constexpr double kRotaryBase = 10000.0;

// ---- front end ----------------------------------------------------------------------------------------
// x: (..., S, hd), hd even. Returns y (x's shape): x rotated by the positions offset..offset+S-1.
Value rotary(Value x, int64_t offset = 0, const std::string& name = {});
// x: (..., S, H, hd), hd even: every head of position s rotated as rotary() rotates row s.
Value rotary_bshd(Value x, int64_t offset = 0, const std::string& name = {});
// x: (..., S, hd). The inverse rotation (by -angle); the backward of rotary().
Value rotary_inverse(Value x, int64_t offset = 0, const std::string& name = {});

}  // namespace xfr
