// Crash-safe file writing and whole-file reading, shared by checkpoints, safetensors and anything else
// that must never leave a half-written file under its final name.
//
// An atomic write goes to a temporary file in the destination's folder (same filesystem, so rename is
// atomic), is fsync'ed, renamed over the destination, and the folder is fsync'ed so the rename itself
// survives a power loss. A reader therefore sees either the old file or the complete new one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace xfr {

// CRC-32 as zlib, PNG and Python's zlib.crc32 compute it (reflected polynomial 0xEDB88320, initial and
// final XOR 0xFFFFFFFF), so `python -c "import zlib; print(hex(zlib.crc32(open(p,'rb').read())))"`
// checks a file independently. Chainable: crc32(b, nb, crc32(a, na)) == crc32(a ++ b).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

// Size and CRC-32 of what was written or read.
struct FileDigest {
  uint64_t size = 0;
  uint32_t crc32 = 0;
};

// Streams a file to `<folder>/.<name>.tmp.<pid>.<n>` and, on commit(), publishes it under `path`
// atomically. Destroying it without commit() removes the temporary file (the destination is untouched).
// Errors throw xfr::Error("file_io", "<path>: <what>: <strerror>").
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  // Flushes, fsyncs, renames over the destination and fsyncs the folder. Returns the digest of the bytes.
  FileDigest commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  FileDigest digest() const { return digest_; }  // of the bytes written so far

 private:
  void flush_buffer();
  void write_fully(const void* data, size_t size);
  std::string path_, temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  std::vector<char> buffer_;
  FileDigest digest_;
};

// Writes `size` bytes to `path` atomically (see above). Returns their size and CRC-32.
FileDigest write_file_atomic(const std::string& path, const void* data, size_t size);
FileDigest write_file_atomic(const std::string& path, const std::string& text);

// The whole file. Throws xfr::Error("file_io", ...) when it cannot be opened or read.
std::vector<uint8_t> read_file(const std::string& path);

// fsync of a folder, so that entries created, renamed or removed in it are durable.
void fsync_directory(const std::string& dir);

}  // namespace xfr
