// The safetensors format (https://github.com/huggingface/safetensors), written and read byte-compatibly
// with the reference implementation (safetensors/src/tensor.rs, which Python's safetensors wraps):
//
//   [8 bytes] N, little-endian u64: the header size
//   [N bytes] UTF-8 JSON object: {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [2, 3],
//             "data_offsets": [begin, end]}, ...}, padded with spaces to a multiple of 8 bytes
//   [rest]    the data: each tensor's row-major little-endian bytes at [begin, end) of this section
//
// The writer produces what safetensors.serialize() produces for the same tensors and metadata: tensors
// ordered by descending dtype alignment, then by name (so every tensor is aligned to its element size),
// `__metadata__` first, compact JSON, space padding. The reader enforces every rule of the reference and
// throws xfr::Error("safetensors", "<file>: <Rule>: <details>"), where Rule is the reference's error name:
//   HeaderTooSmall            the file is shorter than the 8-byte length prefix
//   HeaderTooLarge            N exceeds 100,000,000 bytes (MAX_HEADER_SIZE)
//   InvalidHeaderLength       8 + N exceeds the file size
//   InvalidHeader             the header is not valid UTF-8
//   InvalidHeaderStart        the header does not start with '{'
//   InvalidHeaderDeserialization  not JSON, or not the schema: top level an object; `__metadata__` an
//                             object of strings (or null); each tensor an object with "dtype" (a known
//                             name), "shape" (array of non-negative integers) and "data_offsets" (two
//                             non-negative integers); unknown fields inside a tensor entry are ignored,
//                             as the reference does; nesting deeper than 128 levels (serde_json's limit)
//   DuplicateKey              a tensor name, a `__metadata__` key or a tensor field appears twice (the
//                             reference's JSON map would silently keep the last one; xfrun refuses)
//   InvalidOffset             sorted by offsets, a tensor does not start where the previous one ended
//                             (gap or overlap), or its end precedes its begin
//   ValidationOverflow        product(shape) * dtype size overflows 64 bits
//   TensorInvalidInfo         end - begin != product(shape) * dtype size
//   MetadataIncompleteBuffer  the last tensor does not end exactly at the end of the file
// and, where a valid file holds what xfrun cannot represent:
//   UnsupportedDtype          a dtype the reference knows but xfrun does not (I8, U16, U32, U64, C64,
//                             the F8 and sub-byte float kinds)
//   UnsupportedShape          a dimension above INT64_MAX (only possible in a zero-element tensor)
// BOOL elements are bytes; any nonzero byte reads as true (as torch and numpy treat them).
//
// Checked against Python safetensors 0.8.0: its serialize() gives byte-identical output for mixed
// dtypes, scalars, escaped names and metadata, and it reports the same rule for every malformed case of
// tests/test_safetensors.cpp, except where xfrun is deliberately stricter: duplicate keys (the reference
// keeps the last), a header with leading whitespace (the reference declares InvalidHeaderStart but
// still accepts " {"), and a tensor entry written as a JSON array ["F32", [2], [0, 8]] (serde accepts a
// struct as a sequence; no writer produces it). Files that only the reference's newest sub-byte dtypes
// (F4, F6_*) make valid are refused as UnsupportedDtype.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/file_io.h"
#include "runtime/tensor.h"

namespace xfr {

// The safetensors name of an xfrun dtype: "F32", "F64", "F16", "BF16", "I32", "I64", "U8", "BOOL".
const char* safetensors_dtype_name(DType t);

// The order of the tensors in the data section (their header entries follow it too).
enum class SafetensorsOrder {
  reference,  // descending dtype alignment, then name: byte-identical to safetensors.serialize()
  by_name,    // by name only
  given,      // as passed
};

// One tensor of a validated header. `dtype` is the file's name for it, which may be one that xfrun
// cannot hold (see UnsupportedDtype); `begin`/`end` are byte offsets into the data section.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;
  std::vector<SafetensorsEntry> entries;  // in data-offset order
  uint64_t header_size = 0;               // N
  uint64_t data_start = 0;                // 8 + N: where the data section starts in the file
};

// Validates the header of a file of `file_size` bytes whose first `available` bytes are at `bytes`.
// Needs available >= 8 + N once N passes its checks (fewer is fine when the file is rejected earlier);
// `name` is the file name used in errors. Checks everything except the data bytes themselves.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                           const std::string& name);

// The xfrun dtype and shape of an entry; throws UnsupportedDtype / UnsupportedShape (naming `file`).
DType safetensors_entry_dtype(const SafetensorsEntry& e, const std::string& file);
Shape safetensors_entry_shape(const SafetensorsEntry& e, const std::string& file);

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<std::pair<std::string, Tensor>> tensors;  // in data-offset order, each a fresh CPU tensor

  bool has(const std::string& name) const;
  const Tensor& get(const std::string& name) const;  // throws xfr::Error("safetensors", ...) when absent
};

// The complete file for these tensors (CPU tensors of any strides; names unique, valid UTF-8, not
// "__metadata__"). `metadata` is written as `__metadata__` only when non-empty, as Python's
// save_file(tensors, metadata=None) does; its keys are written sorted.
std::vector<uint8_t> serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                           const std::map<std::string, std::string>& metadata = {},
                                           SafetensorsOrder order = SafetensorsOrder::reference);

// Writes the same bytes to `path` atomically (write_file_atomic), streaming the tensors without a full
// in-memory copy. Returns the file's size and CRC-32.
FileDigest save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                            const std::map<std::string, std::string>& metadata = {},
                            SafetensorsOrder order = SafetensorsOrder::reference);

// Reads and validates a whole file (bytes in memory: for tests, fuzzing, and callers that checksum first).
SafetensorsFile parse_safetensors(const std::vector<uint8_t>& bytes, const std::string& name);
SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size, const std::string& name);

// Reads and validates a file from disk, reading each tensor straight into its own storage.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace xfr
