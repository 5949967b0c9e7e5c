#include "runtime/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "runtime/error.h"

namespace xfr {

namespace {

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zero bytes. Eight lookups per
// 8 input bytes run at ~1-2 GB/s portably, fast enough that checksumming a checkpoint costs little next
// to writing it.
struct Crc32Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  Crc32Tables() {
    constexpr uint32_t kPoly = 0xEDB88320u;  // reflected IEEE 802.3 polynomial (zlib's)
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; ++b)
      for (size_t k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xffu];
  }
};

const Crc32Tables& crc_tables() {
  static const Crc32Tables tables;  // immutable after construction (thread-safe static init)
  return tables;
}

std::string errno_text() { return std::strerror(errno); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error("file_io", path + ": " + what + ": " + errno_text());
}

// Distinguishes temporary names of concurrent writers inside one process (the pid separates processes).
std::atomic<uint64_t> g_temp_counter{0};

// Writes smaller than this are gathered in memory first, so a file made of many small pieces (a JSON
// header, hundreds of small bias tensors) costs few system calls; larger writes go straight through.
constexpr size_t kBufferBytes = size_t{1} << 20;

// One ::write or ::read moves at most this much: Linux caps a single transfer at ~2 GiB anyway, and a
// bounded size keeps partial-transfer handling simple.
constexpr size_t kMaxTransfer = size_t{1} << 30;

}  // namespace

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  const auto& t = crc_tables().t;
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  while (size >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= c;
    c = t[7][lo & 0xffu] ^ t[6][(lo >> 8) & 0xffu] ^ t[5][(lo >> 16) & 0xffu] ^ t[4][lo >> 24] ^
        t[3][hi & 0xffu] ^ t[2][(hi >> 8) & 0xffu] ^ t[1][(hi >> 16) & 0xffu] ^ t[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xffu];
  return ~c;
}

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  namespace fs = std::filesystem;
  const fs::path p(path_);
  XF_CHECK(!p.filename().empty(), "file_io", "'", path_, "' names no file");
  const fs::path folder = p.parent_path();
  // Hidden and suffixed, so a folder listing (or a glob for *.safetensors) never mistakes it for the file.
  const std::string temp_name = "." + p.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                                std::to_string(g_temp_counter.fetch_add(1));
  temp_path_ = (folder / temp_name).string();
  // 0644 before the umask: what an ordinary file written by open(..., "w") gets.
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(temp_path_, "cannot create temporary file");
  buffer_.reserve(kBufferBytes);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());  // best effort: never throw from a destructor
}

void AtomicFileWriter::write_fully(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size < kMaxTransfer ? size : kMaxTransfer);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(temp_path_, "write failed");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::flush_buffer() {
  if (buffer_.empty()) return;
  write_fully(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFileWriter::write(const void* data, size_t size) {
  XF_CHECK(!committed_ && fd_ >= 0, "file_io", path_, ": write after commit");
  if (size == 0) return;
  digest_.crc32 = crc32(data, size, digest_.crc32);
  digest_.size += size;
  if (buffer_.size() + size <= kBufferBytes) {
    const char* p = static_cast<const char*>(data);
    buffer_.insert(buffer_.end(), p, p + size);
    return;
  }
  flush_buffer();
  write_fully(data, size);
}

FileDigest AtomicFileWriter::commit() {
  XF_CHECK(!committed_ && fd_ >= 0, "file_io", path_, ": committed twice");
  flush_buffer();
  if (::fsync(fd_) != 0) fail(temp_path_, "fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(temp_path_, "close failed");
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail(path_, "cannot rename " + temp_path_ + " to it");
  committed_ = true;
  const std::filesystem::path folder = std::filesystem::path(path_).parent_path();
  fsync_directory(folder.empty() ? std::string(".") : folder.string());
  return digest_;
}

FileDigest write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFileWriter w(path);
  w.write(data, size);
  return w.commit();
}

FileDigest write_file_atomic(const std::string& path, const std::string& text) {
  return write_file_atomic(path, text.data(), text.size());
}

std::vector<uint8_t> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    errno = e;
    fail(path, "cannot stat");
  }
  // One byte more than the size, so that EOF shows up without growing the buffer; reading until EOF
  // (rather than trusting st_size) also handles a file that grows meanwhile, or /proc files that report 0.
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size) + 1);
  size_t used = 0;
  constexpr size_t kGrow = size_t{1} << 24;  // 16 MiB more whenever the file outgrows its stat size
  for (;;) {
    if (used == bytes.size()) bytes.resize(bytes.size() + kGrow);
    const size_t want = bytes.size() - used;
    const ssize_t n = ::read(fd, bytes.data() + used, want < kMaxTransfer ? want : kMaxTransfer);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      errno = e;
      fail(path, "read failed");
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  bytes.resize(used);
  ::close(fd);
  return bytes;
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(dir, "cannot open folder");
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  // Some filesystems (and some network mounts) refuse fsync on a folder with EINVAL: nothing more can be
  // done there, and the data itself was already synced.
  if (rc != 0 && e != EINVAL) {
    errno = e;
    fail(dir, "fsync of folder failed");
  }
}

}  // namespace xfr
