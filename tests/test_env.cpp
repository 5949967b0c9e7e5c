// The environment switches and counts of runtime/env.h (XF_CUDA_CACHING, XF_ATTENTION_SM90, XF_ATTENTION_SM90_PINGPONG,
// XF_ATTENTION_SM90_CTAS, ...): what each reads for unset, "0", "1" and anything else.
#include "runtime/env.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("env: default-on flags, opt-in flags and forced choices") {
  const char* name = "XF_TEST_ENV_SWITCH";
  struct Row {
    const char* value;  // null: unset
    bool default_on, opt_in;
    int forced;
  };
  for (const Row& r : {Row{nullptr, true, false, -1}, Row{"0", false, false, 0}, Row{"1", true, true, 1},
                       Row{"yes", true, false, -1}, Row{"", true, false, -1}, Row{"10", true, false, -1}}) {
    ScopedEnv env(name, r.value);
    CAPTURE(r.value ? r.value : "(unset)");
    CHECK(env_flag_default_on(name) == r.default_on);
    CHECK(env_flag(name) == r.opt_in);
    CHECK(env_forced(name) == r.forced);
  }
}

TEST_CASE("env: integers (XF_ATTENTION_SM90_CTAS, XF_GEMM_AUTOTUNE_CANDIDATES) fall back unless wholly a number") {
  const char* name = "XF_TEST_ENV_INT";
  struct Row {
    const char* value;  // null: unset
    int read;           // with fallback 7
  };
  for (const Row& r : {Row{nullptr, 7}, Row{"", 7}, Row{"3", 3}, Row{"-2", -2}, Row{"0", 0}, Row{"132", 132},
                       Row{"12x", 7}, Row{"x", 7}, Row{"99999999999", 7}, Row{"2147483647", 2147483647}}) {
    ScopedEnv env(name, r.value);
    CAPTURE(r.value ? r.value : "(unset)");
    CHECK(env_int(name, 7) == r.read);
  }
}
