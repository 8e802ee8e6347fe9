// Replays every input in fuzz/regressions/http1/ through the fuzz harness itself (parser at
// random splits, then the chunked decoder, with the harness's own consistency checks). Each crash
// the fuzzer ever found lives there, so a fix that regresses fails here, in the normal test run.
#include "fuzz_replay.hpp"

namespace {

using fulmen::test::fuzz_inputs;
using fulmen::test::replay_fuzz_inputs;

TEST(FuzzRegressions, Http1) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/regressions/http1");
  EXPECT_FALSE(files.empty());
  replay_fuzz_inputs(files);
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, Http1Seeds) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/seeds/http1");
  EXPECT_FALSE(files.empty());
  replay_fuzz_inputs(files);
}

}  // namespace
