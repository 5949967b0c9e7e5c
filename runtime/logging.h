// Logging goes through an spdlog logger that the library user owns: pass your own, or a silent one.
// The library never logs through spdlog's global registry.
#pragma once
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace xfr {

using Logger = std::shared_ptr<spdlog::logger>;

// A colour-less stderr logger named `name`, level info. Each call makes a new logger (no registry).
Logger make_stderr_logger(const std::string& name = "xfrun");
// A logger that drops everything.
Logger make_null_logger();

}  // namespace xfr
