// Replays every input in fuzz/regressions/ws/ (and the seeds) through the WebSocket fuzz harness
// itself: frame parser whole and at random splits (also with deferred unmasking), writer round
// trips, UTF-8 validator against its reference, handshake list parsers, all with the harness's
// own checks. Each crash the fuzzer ever found lives there, so a fix that regresses fails here,
// in the normal test run.
#include "fuzz_replay.hpp"

namespace {

using fulmen::test::fuzz_inputs;
using fulmen::test::replay_fuzz_inputs;

TEST(FuzzRegressions, Ws) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/regressions/ws");
  EXPECT_FALSE(files.empty());
  replay_fuzz_inputs(files);
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, WsSeeds) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/seeds/ws");
  EXPECT_FALSE(files.empty());
  replay_fuzz_inputs(files);
}

}  // namespace
