// Replays every input in fuzz/regressions/http1/ through the fuzz harness itself (parser at
// random splits, then the chunked decoder, with the harness's own consistency checks). Each crash
// the fuzzer ever found lives there, so a fix that regresses fails here, in the normal test run.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::string> regression_files() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(FULMEN_FUZZ_DIR "/regressions/http1"))
    if (e.is_regular_file() && e.path().filename().string().rfind("README", 0) != 0) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(FuzzRegressions, Http1) {
  std::vector<std::string> files = regression_files();
  EXPECT_FALSE(files.empty());
  for (const auto& p : files) {
    SCOPED_TRACE(p);
    std::string data = read(p);
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()), 0);
  }
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, Http1Seeds) {
  for (const auto& e : std::filesystem::directory_iterator(FULMEN_FUZZ_DIR "/seeds/http1")) {
    SCOPED_TRACE(e.path().string());
    std::string data = read(e.path().string());
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()), 0);
  }
}

}  // namespace
