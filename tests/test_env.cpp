// The environment switches of runtime/env.h (XF_CUDA_CACHING, XF_ATTENTION_SM90, XF_ATTENTION_SM90_PINGPONG, ...):
// what each reads for unset, "0", "1" and anything else.
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
