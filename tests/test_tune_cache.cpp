// The tuning cache file (runtime/tune_cache.h): choices kept between processes, read back by a new cache over the
// same file, the last line of a key winning, malformed lines skipped, and the path the environment names.
#include <cstring>
#include <fstream>

#include "runtime/tune_cache.h"
#include "temp_dir.h"
#include "testing.h"

using namespace xfr;
using namespace xfr::testing;

TEST_CASE("tune cache: hex round trip and refusals") {
  const uint8_t bytes[] = {0x00, 0x7f, 0x80, 0xff, 0x1a};
  const std::string hex = to_hex(bytes, sizeof bytes);
  CHECK(hex == "007f80ff1a");
  std::vector<uint8_t> back;
  REQUIRE(from_hex(hex, back));
  CHECK(back == std::vector<uint8_t>(bytes, bytes + sizeof bytes));
  REQUIRE(from_hex("ABcd", back));
  CHECK(back == std::vector<uint8_t>{0xab, 0xcd});
  CHECK_FALSE(from_hex("abc", back));  // odd length
  CHECK_FALSE(from_hex("zz", back));   // not a hex digit
}

TEST_CASE("tune cache: choices written by one cache are read by the next over the same file") {
  TempDir dir;
  const std::string path = dir.file("sub/folder/tuning.tsv");  // folders made on the first record
  uint64_t algo[8];                                            // a cuBLASLt algorithm's 64 bytes
  for (int i = 0; i < 8; ++i) algo[i] = 0x0123456789abcdefull * static_cast<uint64_t>(i + 1);
  {
    TuneCache c(path);
    std::vector<uint8_t> got;
    CHECK_FALSE(c.lookup("gemm/a", got));
    CHECK(c.record("gemm/a", algo, sizeof algo, "101.5 us, searched\twith a tab"));
    const uint32_t other = 7;
    CHECK(c.record("gemm/b", &other, sizeof other));
    REQUIRE(c.lookup("gemm/a", got));  // in memory at once
    CHECK(got.size() == sizeof algo);
  }
  {
    std::ofstream junk(path, std::ios::app);  // a torn line, a bad hex field, then a newer choice for gemm/b
    junk << "no tab at all\n" << "gemm/c\tnot-hex\tnote\n" << "\t00\tan empty key\n" << "gemm/b\t09000000\tnewer\n";
  }
  TuneCache again(path);
  std::vector<uint8_t> got;
  REQUIRE(again.lookup("gemm/a", got));
  REQUIRE(got.size() == sizeof algo);
  CHECK(std::memcmp(got.data(), algo, sizeof algo) == 0);
  REQUIRE(again.lookup("gemm/b", got));
  CHECK(got == std::vector<uint8_t>{9, 0, 0, 0});  // the last line of a key wins
  CHECK_FALSE(again.lookup("gemm/c", got));
  CHECK(again.skipped_lines() == 3);
}

TEST_CASE("tune cache: without a file the choices stay in memory") {
  TuneCache c("");
  CHECK_FALSE(c.enabled());
  const uint16_t v = 3;
  CHECK_FALSE(c.record("k", &v, sizeof v));  // nothing written
  std::vector<uint8_t> got;
  REQUIRE(c.lookup("k", got));
  CHECK(got == std::vector<uint8_t>{3, 0});
  TempDir dir;
  TuneCache keyed(dir.file("t.tsv"));
  CHECK_FALSE(keyed.record("a\tb", &v, sizeof v));  // a key with a tab cannot be a line's first field
}

TEST_CASE("tune cache: the path the environment names") {
  {
    ScopedEnv set("XF_TUNE_CACHE", "/some/where.tsv");
    CHECK(TuneCache::default_path() == "/some/where.tsv");
  }
  {
    ScopedEnv off("XF_TUNE_CACHE", "0");
    CHECK(TuneCache::default_path().empty());
  }
  {
    ScopedEnv unset("XF_TUNE_CACHE", nullptr), xdg("XDG_CACHE_HOME", "/xdg");
    CHECK(TuneCache::default_path() == "/xdg/xfrun/tuning.tsv");
  }
  {
    ScopedEnv unset("XF_TUNE_CACHE", nullptr), xdg("XDG_CACHE_HOME", nullptr), home("HOME", "/home/u");
    CHECK(TuneCache::default_path() == "/home/u/.cache/xfrun/tuning.tsv");
  }
}
