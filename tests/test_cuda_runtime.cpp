// The CUDA runtime pieces: device discovery, the caching allocator and its statistics, copies between
// host and device, the cast op, the executor's fused parameter casts. Without XF_TEST_DEVICE=cuda and a GPU these report as skipped.
#include <cmath>

#include "ops/cast.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/grad.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "ops/shape_ops.h"
#include "tests/cuda_testing.h"

#ifdef XF_WITH_CUDA
#include "runtime/cuda/host_staging.h"
#endif

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("cuda: device discovery never throws, and resolve_device names what is missing") {
  const int n = cuda_device_count();
  CHECK(n >= 0);
  CHECK(resolve_device("cpu").is_cpu());
  CHECK((resolve_device("auto").is_cuda() == (n > 0)));
  if (n == 0) {
    CHECK_FALSE(cuda_unavailable_reason().empty());
    try {
      resolve_device("cuda");
      FAIL("resolve_device(cuda) without a device must throw");
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("not available") != std::string::npos);
    }
  }
  CHECK_THROWS_AS(resolve_device("gpu"), Error);
  CHECK_THROWS_AS(resolve_device("cuda:x"), Error);
}

XF_CUDA_TEST_CASE("cuda: round trips host -> device -> host for every dtype, contiguous and strided") {
  DeviceContext* ctx = cuda_test_ctx();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8}) {
    Tensor h = random_tensor({33, 31}, 7, -100, 100).to(dt);
    Tensor d = h.to_device(ctx);
    CHECK(d.device().is_cuda());
    CHECK(d.to_doubles() == h.to_doubles());
    // a strided device view made contiguous
    Tensor dt_view = d.transpose(0, 1);
    CHECK(dt_view.contiguous().to_doubles() == h.transpose(0, 1).contiguous().to_doubles());
  }
}

#ifdef XF_WITH_CUDA
// Host-to-device copies of up to a slot pass through the context's pinned ring (runtime/cuda/host_staging.h): more
// copies than slots, each source overwritten as soon as copy() returns, must all land as they were when copied; a
// copy larger than a slot takes the direct path. One synchronisation at the end, so the ring wraps with copies pending.
XF_CUDA_TEST_CASE("cuda: host-to-device copies through the pinned ring land as copied, the source reusable at once") {
  DeviceContext* ctx = cuda_test_ctx();
  const size_t n = 16411;  // int32s a copy: 64 KB and a few (a batch of token ids), not a multiple of anything
  const int copies = 3 * cuda::HostStaging::kSlots + 1;
  const size_t big = cuda::HostStaging::kSlotBytes / sizeof(int32_t) + 5;  // past a slot: the direct copy
  std::shared_ptr<void> dev = ctx->allocate(copies * n * sizeof(int32_t) + big * sizeof(int32_t));
  int32_t* d = static_cast<int32_t*>(dev.get());
  std::vector<int32_t> src(big);
  for (int c = 0; c < copies; ++c) {
    for (size_t i = 0; i < n; ++i) src[i] = static_cast<int32_t>(c * 1000003 + i);
    ctx->copy(d + c * n, src.data(), n * sizeof(int32_t), CopyKind::host_to_device);
    std::fill(src.begin(), src.end(), -1);  // the copy must not read this
  }
  for (size_t i = 0; i < big; ++i) src[i] = static_cast<int32_t>(7 * i + 3);
  ctx->copy(d + copies * n, src.data(), big * sizeof(int32_t), CopyKind::host_to_device);
  std::vector<int32_t> back(copies * n + big);
  ctx->copy(back.data(), d, back.size() * sizeof(int32_t), CopyKind::device_to_host);
  ctx->synchronize();
  for (int c = 0; c < copies; ++c) {
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += back[c * n + i] != static_cast<int32_t>(c * 1000003 + i);
    CHECK_MESSAGE(bad == 0, "copy " << c << ": " << bad << " wrong values");
  }
  size_t bad = 0;
  for (size_t i = 0; i < big; ++i) bad += back[copies * n + i] != static_cast<int32_t>(7 * i + 3);
  CHECK_MESSAGE(bad == 0, "the copy past a slot: " << bad << " wrong values");
}
#endif

XF_CUDA_TEST_CASE("cuda: device conversions round like the host's (bf16, f16 round to nearest even)") {
  DeviceContext* ctx = cuda_test_ctx();
  Tensor h = random_tensor({257, 3}, 11, -1000, 1000);
  for (DType dt : {DType::bf16, DType::f16}) {
    Tensor d = h.to_device(ctx).to(dt);
    CHECK(d.to_doubles() == h.to(dt).to_doubles());
    CHECK(d.to(DType::f32).to_doubles() == h.to(dt).to(DType::f32).to_doubles());
  }
}

XF_CUDA_TEST_CASE("cuda: the caching allocator reuses freed blocks and keeps statistics") {
  auto ctx = make_device_context(Device::cuda(0));
  const MemoryStats s0 = ctx->memory_stats();
  CHECK(s0.current_bytes == 0);
  { Tensor a = Tensor::empty({1 << 20}, DType::f32, ctx.get()); }  // 4 MiB, freed at once
  const MemoryStats s1 = ctx->memory_stats();
  CHECK(s1.current_bytes == 0);
  CHECK(s1.peak_bytes >= (size_t(4) << 20));
  CHECK(s1.driver_allocs == 1);
  { Tensor b = Tensor::empty({1 << 20}, DType::f32, ctx.get()); }  // served from the cache
  const MemoryStats s2 = ctx->memory_stats();
  if (std::getenv("XF_CUDA_CACHING") == nullptr) CHECK(s2.driver_allocs == 1);
  CHECK(s2.reserved_bytes >= (size_t(4) << 20));
  // tensors keep their context alive
  Tensor keep = Tensor::zeros({5}, DType::f32, ctx.get());
  ctx.reset();
  CHECK(keep.to_doubles() == std::vector<double>(5, 0.0));
}

// Scratch freed during a CUDA-graph capture serves the same capture's later requests (the graph runs its kernels in
// order on one stream), stays the graph's while it lives, and returns to the pool when the graph is destroyed.
XF_CUDA_TEST_CASE("cuda: a captured graph reuses the scratch it freed, and replays with it") {
  if (std::getenv("XF_CUDA_CACHING") != nullptr) return;  // (the sanitizer's runs turn caching off: nothing reused)
  auto ctx = make_device_context(Device::cuda(0));
  const Tensor src = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {6}).to_device(ctx.get());
  Tensor out = Tensor::zeros({3, 4}, DType::f32, ctx.get());
  ctx->synchronize();
  const MemoryStats before = ctx->memory_stats();
  auto graph = capture_graph(*ctx, [&] {
    for (int64_t i = 0; i < 3; ++i) {  // three 4 MiB scratch tensors, one after another
      Tensor scratch = Tensor::empty({1 << 20}, DType::f32, ctx.get());
      scratch.slice(0, 0, 4).copy_from(src.slice(0, i, i + 4));
      out.slice(0, i, i + 1).view({4}).copy_from(scratch.slice(0, 0, 4));
    }
  });
  const MemoryStats captured = ctx->memory_stats();
  CHECK(captured.driver_allocs == before.driver_allocs + 1);  // one block served all three
  CHECK(captured.current_bytes == before.current_bytes + (size_t(4) << 20));  // held for the graph
  ctx->replay(graph);
  CHECK(out.to_doubles() == std::vector<double>{1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6});
  graph.reset();
  CHECK(ctx->memory_stats().current_bytes == before.current_bytes);  // back in the pool
  { Tensor again = Tensor::empty({1 << 20}, DType::f32, ctx.get()); }
  CHECK(ctx->memory_stats().driver_allocs == captured.driver_allocs);  // served from the cache
}

// Side work (DeviceContext::begin_side_work): a block freed while side work is issued may still be read by the side
// stream, so the allocator holds it until the main stream joined that work; then it is cached as any other.
XF_CUDA_TEST_CASE("cuda: a block freed during side work is lent again only after its join") {
  auto ctx = make_device_context(Device::cuda(0));
  REQUIRE(ctx->has_side_stream());
  const void* freed = nullptr;
  ctx->begin_side_work();
  {
    Tensor scratch = Tensor::empty({3 << 18}, DType::f32, ctx.get());  // 3 MiB
    freed = scratch.raw_data();
  }
  const int64_t ticket = ctx->end_side_work();
  CHECK(ticket >= 0);
  Tensor before_join = Tensor::empty({3 << 18}, DType::f32, ctx.get());
  CHECK(before_join.raw_data() != freed);  // held: the side stream may be reading it
  ctx->join_side_work(ticket);
  Tensor after_join = Tensor::empty({3 << 18}, DType::f32, ctx.get());
  CHECK(after_join.raw_data() == freed);  // cached now (the only block of its size that is free)
  ctx->synchronize();
}

XF_CUDA_TEST_CASE("cuda: out of memory is a clear error naming the bytes") {
  auto ctx = make_device_context(Device::cuda(0));
  try {
    Tensor huge = Tensor::empty({int64_t(1) << 50}, DType::f32, ctx.get());  // 4 PiB
    FAIL("allocating 4 PiB must fail");
  } catch (const Error& e) {
    const std::string m = e.what();
    CHECK(m.find("out of memory") != std::string::npos);
    CHECK(m.find("4503599627370496 bytes") != std::string::npos);
  }
  Tensor ok = Tensor::zeros({8}, DType::f32, ctx.get());  // the context still works
  CHECK(ok.to_doubles() == std::vector<double>(8, 0.0));
}

XF_CUDA_TEST_CASE("cuda: cast kernel matches the host conversion") {
  for (DType from : cuda_float_dtypes())
    for (DType to : cuda_float_dtypes()) {
      if (from == to) continue;
      CastOp op(to);
      Tensor x = random_tensor({31, 33}, 5, -3, 3).to(from);
      const auto got = run_op_cuda(op, {x});
      CHECK(got[0].to_doubles() == x.to(to).to_doubles());
    }
}

namespace {

// The four ways the mixed-precision executor cases run their graph on the GPU: way & 1 fuses the parameter casts
// (fuse_param_casts), way & 2 stores each run's gradients (grads_overwrite).
ExecutorOptions mixed_precision_way(int way) {
  ExecutorOptions opt;
  opt.device = Device::cuda(0);
  opt.device_ctx = make_device_context(opt.device);
  opt.fuse_param_casts = (way & 1) != 0;
  opt.grads_overwrite = (way & 2) != 0;
  return opt;
}

// Before a run: the gradients poisoned (NaN, from `poison`, whose host memory the caller keeps until the device has
// synchronised) when the run stores them, zeroed when it adds into them.
void reset_grads(const ExecutorOptions& opt, ParamStore& store, const std::vector<float>& poison) {
  if (opt.grads_overwrite)
    opt.device_ctx->copy(store.grads(), poison.data(), poison.size() * sizeof(float), CopyKind::host_to_device);
  else
    opt.device_ctx->memset_zero(store.grads(), store.flat_size() * sizeof(float));
}

// One rounding to dt, relative: 2^-8 for bf16, 2^-11 for f16.
double unit_roundoff(DType dt) { return dt == DType::bf16 ? 0x1p-8 : 0x1p-11; }

// f32 gradients a fused way stored unrounded (got) against a way that rounded each of their 16-bit parts to dt once
// (ref): every element finite and within `roundings` roundings of ref's largest element (cancellation aside). Returns
// whether any element differs (the unrounded sums reached the slot).
bool within_roundings(const std::vector<double>& ref, const std::vector<double>& got, DType dt, double roundings) {
  REQUIRE(ref.size() == got.size());
  double largest = 0;
  for (double v : ref) largest = std::max(largest, std::abs(v));
  bool differs = false;
  for (size_t i = 0; i < ref.size(); ++i) {
    CHECK(std::isfinite(got[i]));
    CHECK(std::abs(got[i] - ref[i]) <= roundings * unit_roundoff(dt) * largest);
    differs |= got[i] != ref[i];
  }
  return differs;
}

}  // namespace

// A tied embedding in mixed precision (the lookup and the output layer read one table through two casts) and an untied
// one (positions). Fused with grads_overwrite, the output layer's GEMM stores the table's f32 slot, the lookup's
// backward adds its rows' fp32 sums to the rows the ids use (Op::adds_f32), and the positions' backward stores its
// whole slot (unused rows zero): against the per-cast kernels' 16-bit gradients cast and added, within a 16-bit rounding
// of each part. Gradients poisoned (NaN) before each run: a row left unwritten would show.
XF_CUDA_TEST_CASE("cuda executor: a tied embedding's gradients go into its f32 slot (stored, then added by the lookup)") {
  const int64_t V = 701, C = 24, P = 64, n = 57;  // rows of V and P that no id uses
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    Graph g;
    Value ids = g.input("ids", TensorMeta{{n}, DType::i32});
    Value pos = g.input("pos", TensorMeta{{n}, DType::i32});
    Value wte = g.param("wte", {V, C}), wpe = g.param("wpe", {P, C});
    Value h = add(embedding(cast(wte, dt, "wte_cast"), ids, "tok"), embedding(cast(wpe, dt, "wpe_cast"), pos, "pos"));
    Value logits = matmul(h, cast(wte, dt, "wte_cast_again"), false, true, "logits");  // (n, V)
    Value y = cast(logits, DType::f32, "y_f32");
    Value loss = reduce_sum(mul(y, y), {}, false, "loss");
    Gradients grads = gradients(loss, Value{});
    std::vector<int32_t> ids_v(n), pos_v(n);
    for (int64_t i = 0; i < n; ++i) {
      ids_v[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37) % 300);  // repeats, and rows 300.. unused
      pos_v[static_cast<size_t>(i)] = static_cast<int32_t>(i % 50);          // rows 50..63 unused
    }
    std::vector<std::vector<double>> results[4];
    for (int way = 0; way < 4; ++way) {
      ExecutorOptions opt = mixed_precision_way(way);
      auto store = std::make_shared<ParamStore>(g, opt.device_ctx.get());
      store->param("wte").copy_from(random_tensor({V, C}, 15, -1, 1));
      store->param("wpe").copy_from(random_tensor({P, C}, 16, -1, 1));
      Executor ex(g, {y}, grads, store, opt);
      ex.bind(ids, Tensor::from_vector(ids_v, {n}));
      ex.bind(pos, Tensor::from_vector(pos_v, {n}));
      const std::vector<float> poison(store->flat_size(), std::nanf(""));
      for (int run = 0; run < 2; ++run) {
        reset_grads(opt, *store, poison);
        ex.run();
        results[way].push_back(store->grad("wte").to_doubles());
        results[way].push_back(store->grad("wpe").to_doubles());
      }
      opt.device_ctx->synchronize();  // (the poison's host memory)
    }
    for (int way = 1; way < 4; ++way) {
      CAPTURE(way);
      REQUIRE(results[0].size() == results[way].size());
      for (size_t k = 0; k < results[0].size(); ++k) {
        CAPTURE(k);
        if (way != 3) {
          CHECK(results[0][k] == results[way][k]);
          continue;
        }
        // The unrounded sums: each of the (at most two) 16-bit parts the other ways add was rounded once, so the
        // difference is within two roundings of the largest gradient of the table, and not zero.
        CHECK(within_roundings(results[0][k], results[way][k], dt, 2));
      }
      // The rows no id uses: the output layer's part alone (wte), zero (wpe).
      for (int64_t r = 50; r < P; ++r)
        for (int64_t c = 0; c < C; ++c) CHECK(results[way][1][static_cast<size_t>(r * C + c)] == 0.0);
    }
  }
}

// Parameters stored next to each other (Graph::store_adjacent, a packed q/k/v projection's weights) and concatenated
// along their first axis: with fused casts the concatenation is a view of the 16-bit mirror, not a copy. The same
// outputs and gradients as the concat kernel, bit for bit, over two runs with an update of the parameters between.
XF_CUDA_TEST_CASE("cuda executor: a concatenation of adjacent parameters is a view of the mirror, bit for bit") {
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    Graph g;
    compute_in(g, dt);
    Value x = g.input("x", TensorMeta{{33, 40}, dt});
    g.param("before", {7});  // ahead of the group in the store: the view starts past it
    const std::vector<Value> w{g.param("a", {16, 40}), g.param("b", {24, 40}), g.param("c", {16, 40})};
    g.store_adjacent(w);
    Value y = matmul(x, concat(w, 0, "abc"), false, true, "y");  // (33, 56)
    Value out = cast(y, DType::f32, "out");
    Gradients grads = gradients(reduce_sum(out, {}, false, "sum"), Value{});
    std::vector<std::vector<double>> results[2];
    for (int fused = 0; fused < 2; ++fused) {
      ExecutorOptions opt = mixed_precision_way(fused);
      auto store = std::make_shared<ParamStore>(g, opt.device_ctx.get());
      uint64_t seed = 40;
      for (const char* p : {"a", "b", "c"}) store->param(p).copy_from(random_tensor(store->shape(p), ++seed, -1, 1));
      Executor ex(g, {out}, grads, store, opt);
      ex.bind(x, random_tensor({33, 40}, 50, -1, 1).to(dt));
      for (int run = 0; run < 2; ++run) {
        opt.device_ctx->memset_zero(store->grads(), store->flat_size() * sizeof(float));
        ex.run();
        results[fused].push_back(ex.get(out).to_doubles());
        for (const char* p : {"a", "b", "c"}) results[fused].push_back(store->grad(p).to_doubles());
        store->param("b").copy_from(random_tensor({24, 40}, 60 + run, -1, 1));  // an "update"
      }
    }
    REQUIRE(results[0].size() == results[1].size());
    for (size_t k = 0; k < results[0].size(); ++k) CHECK(results[0][k] == results[1][k]);
    CHECK(results[0][0] != results[0][4]);  // the update reached the second run's output
  }
}

// The backward of that concatenation splits the packed weight gradient into the three parameters' parts. Stored by each
// run (grads_overwrite) with fused casts, the weight-gradient GEMM writes the packed gradient in f32 across the three
// adjacent slots itself (no 16-bit dW, no cast per part): against the unfused way's 16-bit parts cast into the slots,
// within one 16-bit rounding of the largest gradient, every element written (slots poisoned), and not bit for bit (the
// f32 sums were not rounded). The biases' packed gradient takes the same way.
XF_CUDA_TEST_CASE("cuda executor: a packed gradient split into adjacent slots is stored there by its GEMM in f32") {
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    Graph g;
    compute_in(g, dt);
    Value x = g.input("x", TensorMeta{{3, 43, 40}, dt});
    g.param("before", {7});
    const std::vector<Value> w{g.param("a", {16, 40}), g.param("b", {24, 40}), g.param("c", {16, 40})};
    const std::vector<Value> b{g.param("ab", {16}), g.param("bb", {24}), g.param("cb", {16})};
    g.store_adjacent(w);
    g.store_adjacent(b);
    Value y = linear_op(x, concat(w, 0, "abc"), concat(b, 0, "abc_bias"), false, "y");  // (3, 43, 56)
    Value out = cast(y, DType::f32, "out");
    Gradients grads = gradients(reduce_sum(mul(out, out), {}, false, "sum"), Value{});
    std::vector<std::vector<double>> results[2];
    for (int fused = 0; fused < 2; ++fused) {
      ExecutorOptions opt = mixed_precision_way(2 + fused);
      auto store = std::make_shared<ParamStore>(g, opt.device_ctx.get());
      uint64_t seed = 70;
      for (const auto& slot : store->slots()) store->param(slot.name).copy_from(random_tensor(store->shape(slot.name), ++seed, -1, 1));
      Executor ex(g, {out}, grads, store, opt);
      ex.bind(x, random_tensor({3, 43, 40}, 80, -1, 1).to(dt));
      const std::vector<float> poison(store->flat_size(), std::nanf(""));
      reset_grads(opt, *store, poison);
      ex.run();
      for (const char* p : {"a", "b", "c", "ab", "bb", "cb"}) results[fused].push_back(store->grad(p).to_doubles());
      opt.device_ctx->synchronize();  // (the poison's host memory)
    }
    bool differs = false;
    for (size_t k = 0; k < results[0].size(); ++k) {
      CAPTURE(k);
      const bool d = within_roundings(results[0][k], results[1][k], dt, 1);
      differs |= k < 3 && d;
    }
    CHECK(differs);  // the weights' parts were not rounded to 16 bits
  }
}

// Mixed precision on the GPU: the executor's fused parameter casts (one flat 16-bit mirror of the
// parameters, gradients accumulated straight from 16 bits) give the per-cast kernels' outputs and
// gradients bit for bit, over two runs (the mirror is refreshed every run) with a parameter update between.
// Either way also with grads_overwrite, the gradients poisoned (NaN) before each run instead of zeroed: the
// stores (from 16 bits, or from f32 after a cast kernel) leave the same bits as adds into zeros, except where the
// fused way lets a weight-gradient GEMM write the f32 slot itself (within a 16-bit rounding).
XF_CUDA_TEST_CASE("cuda executor: fused parameter casts equal one cast kernel per parameter, bit for bit") {
  for (DType dt : {DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dt));
    Graph g;
    Value x = g.input("x", TensorMeta{{33, 131}, dt});
    // w1: 16899 elements, past Executor::kBatchedGradMaxElems (its gradient is written by a launch of its own); w2: 129,
    // a slot that is not a multiple of 16 (written by the run's batched launch).
    Value w1 = g.param("w1", {131, 129}), w2 = g.param("w2", {129});
    Value h = matmul(x, cast(w1, dt, "w1_cast"), false, false, "h");            // (33, 129)
    // w2 read through two casts, as a tied embedding: with grads_overwrite its two f32 gradients fold into the slot
    // (stored, then added) instead of an add of two f32 casts.
    Value y2 = add(add(h, cast(w2, dt, "w2_cast"), "y1"), cast(w2, dt, "w2_cast_again"), "y2");  // (33, 129)
    Value y = cast(y2, DType::f32, "y_f32");
    Value loss = reduce_sum(y, {}, false, "loss");
    Gradients grads = gradients(loss, Value{});
    std::vector<std::vector<double>> results[4];
    for (int way = 0; way < 4; ++way) {
      ExecutorOptions opt = mixed_precision_way(way);
      auto store = std::make_shared<ParamStore>(g, opt.device_ctx.get());
      store->param("w1").copy_from(random_tensor({131, 129}, 5, -1, 1));
      store->param("w2").copy_from(random_tensor({129}, 6, -1, 1));
      Executor ex(g, {y}, grads, store, opt);
      ex.bind(x, random_tensor({33, 131}, 7, -1, 1).to(dt));
      const std::vector<float> poison(store->flat_size(), std::nanf(""));
      for (int run = 0; run < 2; ++run) {
        reset_grads(opt, *store, poison);
        ex.run();
        results[way].push_back(ex.get(y).to_doubles());
        results[way].push_back(store->grad("w1").to_doubles());
        results[way].push_back(store->grad("w2").to_doubles());
        store->param("w1").copy_from(random_tensor({131, 129}, 8 + run, -1, 1));  // an "update"
      }
      opt.device_ctx->synchronize();  // (the poison's host memory)
    }
    for (int way = 1; way < 4; ++way) {
      CAPTURE(way);
      REQUIRE(results[0].size() == results[way].size());
      for (size_t k = 0; k < results[0].size(); ++k) {
        CAPTURE(k);
        // Fused with grads_overwrite, w1's weight gradient GEMM writes its f32 slot itself (Op::stores_f32): its fp32
        // sums, not their 16-bit rounding, so within one rounding (2^-8 relative for bf16, 2^-11 for f16) of the others.
        if (way == 3 && k % 3 == 1) {
          const double u = unit_roundoff(dt);
          std::vector<double> scaled(results[0][k].size());
          for (size_t i = 0; i < scaled.size(); ++i) scaled[i] = std::abs(results[0][k][i]) * u;
          bool differs = false;
          for (size_t i = 0; i < scaled.size(); ++i) {
            CHECK(std::abs(results[way][k][i] - results[0][k][i]) <= scaled[i]);
            differs |= results[way][k][i] != results[0][k][i];
          }
          CHECK(differs);  // the unrounded sums did reach the slot
        } else {
          CHECK(results[0][k] == results[way][k]);
        }
      }
    }
  }
}

// Side work (ExecutorOptions::side_stream): the weight gradients of a stack of linear layers (GELU MLPs over a
// layernorm, as a transformer's: the ones column, dgelu epilogues, f32 slots) run on the side stream from the second
// run on, eagerly and in a captured graph with its replays. Their buffers are reused by later steps only after the
// main stream waited for them: each run's gradients and output equal the one-stream executor's bit for bit (the same
// kernels on the same bytes), gradients poisoned (NaN) before each run. Awkward sizes: 3 x 343 rows, widths 104 / 328.
XF_CUDA_TEST_CASE("cuda executor: weight gradients on the side stream give the one-stream results bit for bit") {
  constexpr int64_t B = 3, T = 343, C = 104, H = 328, kLayers = 3;
  for (bool graph : {false, true}) {
    CAPTURE(graph);
    Graph g;
    const DType dt = DType::bf16;
    compute_in(g, dt);
    Value x = g.input("x", TensorMeta{{B, T, C}, dt});
    Value h = x;
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = "l" + std::to_string(l) + ".";
      Value n = layernorm(h, g.param(p + "gamma", {C}), g.param(p + "beta", {C}), 1e-5, p + "norm");
      Value up = linear_op(n, g.param(p + "w1", {H, C}), g.param(p + "b1", {H}), true, p + "fc");     // (B, T, H)
      h = add(h, linear_op(up, g.param(p + "w2", {C, H}), g.param(p + "b2", {C}), false, p + "proj"), p + "res");
    }
    Value out = cast(h, DType::f32, "out");
    Gradients grads = gradients(reduce_sum(mul(out, out), {}, false, "sum"), Value{});
    std::vector<std::vector<double>> results[2];
    for (int side = 0; side < 2; ++side) {
      ExecutorOptions opt;
      opt.device = Device::cuda(0);
      opt.device_ctx = make_device_context(opt.device);
      opt.grads_overwrite = true;
      opt.cuda_graph = graph;
      opt.side_stream = side == 1;
      auto store = std::make_shared<ParamStore>(g, opt.device_ctx.get());
      uint64_t seed = 90;
      for (const auto& slot : store->slots())
        store->param(slot.name).copy_from(random_tensor(store->shape(slot.name), ++seed, -0.2, 0.2));
      Executor ex(g, {out}, grads, store, opt);
      // Three layers, two weight gradients each (their bias gradients with them, or in the norms' backward).
      CHECK(ex.side_steps() == (side == 1 ? 2 * kLayers : 0));
      ex.bind(x, random_tensor({B, T, C}, 99, -1, 1).to(dt));
      const std::vector<float> poison(store->flat_size(), std::nanf(""));
      for (int run = 0; run < 4; ++run) {  // eager; then eager again or captured; then replays
        reset_grads(opt, *store, poison);
        ex.run();
        results[side].push_back(ex.get(out).to_doubles());
        for (const auto& slot : store->slots()) results[side].push_back(store->grad(slot.name).to_doubles());
        store->param("l1.w1").copy_from(random_tensor({H, C}, 200 + run, -0.2, 0.2));  // an "update"
      }
      opt.device_ctx->synchronize();  // (the poison's host memory)
    }
    REQUIRE(results[0].size() == results[1].size());
    for (size_t k = 0; k < results[0].size(); ++k) {
      CAPTURE(k);
      CHECK(results[0][k] == results[1][k]);
      for (double v : results[1][k]) REQUIRE(std::isfinite(v));
    }
  }
}
