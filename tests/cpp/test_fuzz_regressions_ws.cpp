// Replays every input in fuzz/regressions/ws/ (and the seeds) through the WebSocket fuzz harness
// itself: frame parser whole and at random splits, writer round trips, UTF-8 validator against its
// reference, handshake list parsers, all with the harness's own checks. Each crash the fuzzer ever
// found lives there, so a fix that regresses fails here, in the normal test run. A separate
// executable from the HTTP/1 replay because each harness defines LLVMFuzzerTestOneInput.
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

TEST(FuzzRegressions, Ws) {
  std::vector<std::string> files = files_in(FULMEN_FUZZ_DIR "/regressions/ws");
  EXPECT_FALSE(files.empty());
  for (const auto& p : files) {
    SCOPED_TRACE(p);
    std::string data = read(p);
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
              0);
  }
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, WsSeeds) {
  std::vector<std::string> files = files_in(FULMEN_FUZZ_DIR "/seeds/ws");
  EXPECT_FALSE(files.empty());
  for (const auto& p : files) {
    SCOPED_TRACE(p);
    std::string data = read(p);
    EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
              0);
  }
}

}  // namespace
