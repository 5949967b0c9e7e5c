// The docs that are generated from code must match it.
#include <fstream>
#include <sstream>

#include "factory/registry.h"
#include "testing.h"

#ifndef XF_SOURCE_DIR_FOR_TESTS
#define XF_SOURCE_DIR_FOR_TESTS "."
#endif

TEST_CASE("docs: docs/config.md is the registry's config reference (regenerate: xfrun config-reference)") {
  std::ifstream in(std::string(XF_SOURCE_DIR_FOR_TESTS) + "/docs/config.md");
  REQUIRE_MESSAGE(in.good(), "docs/config.md is missing");
  std::stringstream ss;
  ss << in.rdbuf();
  CHECK(ss.str() == xfr::config_reference_markdown(xfr::Registry::builtin()));
}
