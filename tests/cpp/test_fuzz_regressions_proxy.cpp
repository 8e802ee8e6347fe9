// Replays every input in fuzz/regressions/proxy/ (and the seeds) through the proxy fuzz harness
// itself (PROXY protocol header whole and at every prefix, proxy headers with the harness's own
// checks). Each crash the fuzzer ever finds lives there, so a fix that regresses fails here, in
// the normal test run. A separate executable because each harness defines LLVMFuzzerTestOneInput.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename().string().rfind("README", 0) != 0)
      out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(FuzzRegressions, Proxy) {
  std::vector<std::string> files = files_in(FULMEN_FUZZ_DIR "/regressions/proxy");
  EXPECT_FALSE(files.empty());
  for (const auto& p : files) {
    SCOPED_TRACE(p);
    std::string data = read(p);
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
              0);
  }
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, ProxySeeds) {
  std::vector<std::string> files = files_in(FULMEN_FUZZ_DIR "/seeds/proxy");
  EXPECT_FALSE(files.empty());
  for (const auto& p : files) {
    SCOPED_TRACE(p);
    std::string data = read(p);
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
              0);
  }
}

}  // namespace
