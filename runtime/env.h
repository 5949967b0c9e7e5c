// Switches and counts read from the environment (XF_CUDA_CACHING, XF_GEMM_AUTOTUNE, XF_ATTENTION_SM90, ...).
#pragma once
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

namespace xfr {

// 1 when the variable is "1", 0 when it is "0", else -1 (unset or anything else: the caller's own default).
inline int env_forced(const char* name) {
  const char* v = std::getenv(name);
  if (v && std::strcmp(v, "1") == 0) return 1;
  if (v && std::strcmp(v, "0") == 0) return 0;
  return -1;
}

// false only when the variable is "0" (unset or anything else: true).
inline bool env_flag_default_on(const char* name) { return env_forced(name) != 0; }

// true only when the variable is "1".
inline bool env_flag(const char* name) { return env_forced(name) == 1; }

// The variable as a decimal int; `fallback` when unset, empty, not wholly a number or out of int's range.
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || errno == ERANGE || x < INT_MIN || x > INT_MAX) return fallback;
  return static_cast<int>(x);
}

}  // namespace xfr
