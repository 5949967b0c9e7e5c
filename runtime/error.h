// xfr::Error: the one exception type of the library. It carries the op (or component) that refused,
// and optionally the config path that led there, so a user sees
//   [softmax] mask shape (4, 9) does not broadcast to scores (2, 4, 8, 8) (at stack_configs[0]...)
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

namespace xfr {

class Error : public std::runtime_error {
 public:
  Error(std::string op, std::string message, std::string config_path = {})
      : std::runtime_error(format(op, message, config_path)),
        op_(std::move(op)), message_(std::move(message)), config_path_(std::move(config_path)) {}

  const std::string& op() const { return op_; }
  const std::string& message() const { return message_; }
  const std::string& config_path() const { return config_path_; }

  // A copy of this error that also names the config path (used by the factory when a component throws).
  Error with_config_path(const std::string& path) const { return Error(op_, message_, path); }

 private:
  static std::string format(const std::string& op, const std::string& msg, const std::string& path) {
    std::string s = op.empty() ? msg : "[" + op + "] " + msg;
    if (!path.empty()) s += " (at " + path + ")";
    return s;
  }
  std::string op_, message_, config_path_;
};

namespace detail {
inline void stream_all(std::ostringstream&) {}
template <class T, class... R>
void stream_all(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  stream_all(os, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<< into a message.
template <class... A>
std::string str_cat(const A&... a) {
  std::ostringstream os;
  detail::stream_all(os, a...);
  return os.str();
}

}  // namespace xfr

// XF_CHECK(cond, "op", message parts...) throws xfr::Error("[op] message") when cond is false.
#define XF_CHECK(cond, op, ...)                                 \
  do {                                                          \
    if (!(cond)) throw ::xfr::Error((op), ::xfr::str_cat(__VA_ARGS__)); \
  } while (0)
