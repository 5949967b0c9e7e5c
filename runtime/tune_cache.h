// Tuned choices kept on disk between processes: the GEMM autotuner's cuBLASLt algorithms (ops/cuda/matmul.cu) are
// timed once per machine, not once per process. A choice's time is the cost here: GPT-2's first step spends about
// 45 s tuning its 15 GEMM shapes with the configuration search (docs/gpu.md), and a sweep of many short runs would
// pay it in each. torch.compile's inductor and Triton keep such caches too (in /tmp and ~/.triton).
//
// The file: one line a choice, "<key>\t<hex bytes>\t<note>\n", appended (a single write() of one line with O_APPEND,
// so concurrent processes do not interleave lines); read once per process, the last line of a key wins; a line
// that does not parse is skipped. The key names everything the choice depends on (the caller's: the GPU's name,
// compute capability and SM count, the library's version, the plan key), and a caller validates a loaded choice
// before it uses it (cuBLASLt checks an algorithm against the plan), so a stale or foreign line costs a retune,
// never a wrong result.
//
// Where: XF_TUNE_CACHE=<file>; unset: $XDG_CACHE_HOME/xfrun/tuning.tsv, else $HOME/.cache/xfrun/tuning.tsv;
// XF_TUNE_CACHE=0 (or empty): no file, every process tunes (what the GPU tests run with, so that they tune).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace xfr {

class TuneCache {
 public:
  // A cache over `path`; with an empty path the choices are kept in this object only.
  explicit TuneCache(std::string path);

  // The process's cache, at the path the environment names (above).
  static TuneCache& instance();
  // The path instance() uses ("" when off).
  static std::string default_path();

  const std::string& path() const { return path_; }
  bool enabled() const { return !path_.empty(); }

  // The bytes stored under `key`, if any (the file is read at the first lookup).
  bool lookup(const std::string& key, std::vector<uint8_t>& bytes);
  // Stores `bytes` under `key` in memory and appends the line to the file (creating its folder). `note` is for a
  // reader of the file (for example the time measured); tabs and newlines in it are replaced by spaces.
  // Returns false when the line could not be written (the choice is still kept in memory).
  bool record(const std::string& key, const void* bytes, size_t n, const std::string& note = "");

  // Lines of the file that were skipped as malformed (after the first lookup).
  int skipped_lines() const { return skipped_; }

 private:
  void load_locked();
  std::string path_;
  std::mutex mu_;
  bool loaded_ = false;
  int skipped_ = 0;
  std::map<std::string, std::vector<uint8_t>> entries_;
};

// Hex of bytes (lower case, two digits a byte) and back; from_hex fails on odd length or a non-hex digit.
std::string to_hex(const void* bytes, size_t n);
bool from_hex(const std::string& hex, std::vector<uint8_t>& out);

}  // namespace xfr
