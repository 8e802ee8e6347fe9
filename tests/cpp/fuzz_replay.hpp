// Replaying fuzz inputs through a harness in the normal test run. Each regression test binary
// links one fuzz target (each defines LLVMFuzzerTestOneInput) and replays its directories:
// fuzz/regressions/<target>/ (every crash the fuzzer ever found) and fuzz/seeds/<target>/.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fulmen::test {

// The input files of a directory, sorted (its README is not an input).
inline std::vector<std::string> fuzz_inputs(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename().string().rfind("README", 0) != 0)
      out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Runs every file through the harness; it aborts on a broken oracle, which fails the test binary.
inline void replay_fuzz_inputs(const std::vector<std::string>& files) {
  for (const auto& p : files) {
    SCOPED_TRACE(p);
    const std::string data = read_file(p);
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()), 0);
  }
}

}  // namespace fulmen::test
