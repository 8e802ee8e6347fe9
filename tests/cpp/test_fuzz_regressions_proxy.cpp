// Replays every input in fuzz/regressions/proxy/ (and the seeds) through the proxy fuzz harness
// itself (PROXY protocol header whole and at every prefix, proxy headers with the harness's own
// checks). Each crash the fuzzer ever finds lives there, so a fix that regresses fails here, in
// the normal test run.
#include "fuzz_replay.hpp"

namespace {

using fulmen::test::fuzz_inputs;
using fulmen::test::replay_fuzz_inputs;

TEST(FuzzRegressions, Proxy) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/regressions/proxy");
  EXPECT_FALSE(files.empty());
  replay_fuzz_inputs(files);
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, ProxySeeds) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/seeds/proxy");
  EXPECT_FALSE(files.empty());
  replay_fuzz_inputs(files);
}

}  // namespace
