// Which implementation runs a fused attention call (the flash_attention op and its backward) on a GPU, and
// what `xfrun info` says about every attention backend. Host-only and GPU-free: the choice is a pure function
// of the request and of each backend's support for the call, so it is unit-tested without a GPU;
// ops/cuda/attention_dispatch.h works the support out for a real call (probing cuDNN) and runs the choice.
//
// XF_ATTENTION_BACKEND (read at each call; unset or empty means auto):
//   auto       cuDNN's fused attention where it can run the call (and its plan's scratch fits auto's budget);
//              our native kernel otherwise. A backward goes to cuDNN only when its forward does too (the same
//              shape, so the same choice), so a forward and its backward normally run on one backend.
//   native     always our FA2-style kernel (ops/cuda/flash_attention.cu)
//   cudnn      always cuDNN; a call it cannot run is an error naming every backend's reason
//   composite  graph level (ops/attention.cpp): scaled_dot_product_attention keeps the matmul + softmax +
//              matmul composite and emits no flash_attention node; flash_attention nodes built directly run
//              under auto's rule.
// Both backends return the same lse, the natural-log log-sum-exp of the scaled scores (tests check cuDNN's
// statistics against the native kernel's), so a backward may run on another backend than its forward (say a
// backward with a gradient of lse, which cuDNN's backward does not take) and still be exact.
#pragma once
#include <string>
#include <vector>

namespace xfr {

enum class AttentionBackendRequest { automatic, native, cudnn, composite };

// "auto", "native", "cudnn" or "composite" (an empty value is auto); anything else throws
// xfr::Error("flash_attention", ...) naming XF_ATTENTION_BACKEND, the value and the known values.
AttentionBackendRequest parse_attention_backend(const std::string& value);
// parse_attention_backend of $XF_ATTENTION_BACKEND (unset: auto).
AttentionBackendRequest attention_backend_from_env();

// XF_ATTENTION_DETERMINISTIC: "1" (the default, also when unset or empty) keeps every attention backward bitwise
// reproducible (the native kernels have no atomics; cuDNN runs its deterministic algorithm, which on sm_90 keeps dP,
// B·H·Sq·Sk values, in its scratch); "0" lets dq be summed in an order that varies, as PyTorch's flash and cuDNN
// backends do: cuDNN accumulates dq with atomics (O(B·H·Sq·D) scratch) and the native Hopper backward adds each key
// block's share of dq into an f32 workspace by reductions in L2 (no dQ kernel; docs/attention.md). Faster, but the
// bits of dq may change from run to run (a replayed training step then no longer equals the eager one bit for
// bit). Anything else throws xfr::Error naming the variable.
bool parse_attention_deterministic(const std::string& value);
bool attention_deterministic_from_env();
const char* attention_backend_request_name(AttentionBackendRequest r);  // "auto", "native", ...

enum class AttentionBackend { native, cudnn };
const char* attention_backend_name(AttentionBackend b);  // "native", "cudnn"

// Whether one backend can run one call; when it cannot, why ("dropout needs ...").
struct BackendSupport {
  bool ok = false;
  std::string reason;  // empty when ok
  static BackendSupport yes() { return {true, {}}; }
  static BackendSupport no(std::string why) { return {false, std::move(why)}; }
};

// What the choice needs to know about one call.
struct AttentionCallSupport {
  std::string call;  // the call, for messages: "forward bf16 B=2 H=8 Hk=8 Sq=1000 Sk=1000 D=64 causal"
  bool backward = false;
  BackendSupport native;
  BackendSupport cudnn;          // this call on cuDNN
  BackendSupport cudnn_forward;  // backward only: the forward of the same attention on cuDNN
  // Non-empty: cuDNN could run the call but auto should not (its plan's scratch is past auto's budget);
  // a forced cudnn request ignores it.
  std::string cudnn_auto_veto;
};

// The backend that runs the call, by the rules above. Throws xfr::Error("flash_attention", ...) naming the
// request, the call and every backend's reason when the request cannot be met (a forced backend that cannot
// run the call, or no backend at all).
AttentionBackend choose_attention_backend(AttentionBackendRequest request, const AttentionCallSupport& s);

// One line of `xfrun info`'s attention section, as xFormers' `python -m xformers.info` lists its kernels.
struct AttentionBackendInfo {
  std::string name;    // "cudnn fused attention"
  bool available = false;
  std::string detail;  // why not, or versions and limits
};
// Every attention backend of this build on this machine: cpu flash_attention, cpu composite, cuda
// flash_attention (native), cuda composite, cudnn fused attention.
std::vector<AttentionBackendInfo> attention_backends_info();

}  // namespace xfr
