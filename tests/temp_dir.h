// A fresh folder under the system temp folder for a test, removed with everything in it at scope exit.
#pragma once
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

namespace xfr::testing {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};  // several per process; the pid separates concurrent test runs
    path = std::filesystem::temp_directory_path() /
           ("xfr_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string str() const { return path.string(); }
  // The path of `name` inside the folder (nothing is created).
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string sub(const std::string& name) const { return file(name); }
  // Writes `text` to `name` (creating its folders) and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    std::filesystem::create_directories((path / name).parent_path());
    std::ofstream(path / name, std::ios::binary) << text;
    return file(name);
  }
};

}  // namespace xfr::testing
