// One test binary for every backend: XF_TEST_DEVICE=cpu (default) or =cuda selects the device under test.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

int main(int argc, char** argv) {
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}
