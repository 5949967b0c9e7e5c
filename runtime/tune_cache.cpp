#include "runtime/tune_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace xfr {

std::string to_hex(const void* bytes, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  const auto* b = static_cast<const uint8_t*>(bytes);
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = kDigits[b[i] >> 4];
    s[2 * i + 1] = kDigits[b[i] & 15];
  }
  return s;
}

bool from_hex(const std::string& hex, std::vector<uint8_t>& out) {
  if (hex.size() % 2 != 0) return false;
  const auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::vector<uint8_t> b(hex.size() / 2);
  for (size_t i = 0; i < b.size(); ++i) {
    const int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    b[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  out = std::move(b);
  return true;
}

TuneCache::TuneCache(std::string path) : path_(std::move(path)) {}

std::string TuneCache::default_path() {
  if (const char* v = std::getenv("XF_TUNE_CACHE")) return (std::string(v) == "0") ? std::string() : std::string(v);
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/xfrun/tuning.tsv";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/xfrun/tuning.tsv";
  return {};
}

TuneCache& TuneCache::instance() {
  static TuneCache cache(default_path());
  return cache;
}

void TuneCache::load_locked() {
  if (loaded_) return;
  loaded_ = true;
  if (path_.empty()) return;
  std::ifstream in(path_);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const size_t t1 = line.find('\t');
    const size_t t2 = t1 == std::string::npos ? std::string::npos : line.find('\t', t1 + 1);
    std::vector<uint8_t> bytes;
    if (t1 == 0 || t1 == std::string::npos ||
        !from_hex(line.substr(t1 + 1, t2 == std::string::npos ? std::string::npos : t2 - t1 - 1), bytes) ||
        bytes.empty()) {
      ++skipped_;
      continue;
    }
    entries_[line.substr(0, t1)] = std::move(bytes);  // a later line of the key wins
  }
}

bool TuneCache::lookup(const std::string& key, std::vector<uint8_t>& bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  load_locked();
  const auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  bytes = it->second;
  return true;
}

bool TuneCache::record(const std::string& key, const void* bytes, size_t n, const std::string& note) {
  std::lock_guard<std::mutex> lock(mu_);
  load_locked();
  const auto* b = static_cast<const uint8_t*>(bytes);
  entries_[key] = std::vector<uint8_t>(b, b + n);
  if (path_.empty() || key.find_first_of("\t\n") != std::string::npos) return false;
  std::string clean = note;
  for (char& c : clean)
    if (c == '\t' || c == '\n') c = ' ';
  const std::string line = key + "\t" + to_hex(bytes, n) + "\t" + clean + "\n";
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  const ssize_t w = ::write(fd, line.data(), line.size());  // one write: lines of concurrent writers stay whole
  ::close(fd);
  return w == static_cast<ssize_t>(line.size());
}

}  // namespace xfr
