// Replays every input in fuzz/regressions/ws_deflate/ (and the seeds) through the
// permessage-deflate fuzz harness itself: the Inflater whole and at random splits, the size
// limit, and the Deflater -> Inflater round trip, all with the harness's own checks. Each crash
// the fuzzer ever found lives there, so a fix that regresses fails here, in the normal test run.
// A separate executable from the other replays because each harness defines
// LLVMFuzzerTestOneInput.
//
// The regressions directory may hold only its README (no crash found yet), so the seeds carry
// the weight: there must be some, and the named ones must still decode to what their names say
// under the harness's input layout (a change to that layout that turns them into noise fails
// here instead of silently weakening the fuzzer).
#include <string>
#include <vector>

#include "../../fuzz/fuzz_support.hpp"
#include "core/ws/deflate.hpp"
#include "fuzz_replay.hpp"

namespace {

using fulmen::test::fuzz_inputs;
using fulmen::test::read_file;
using fulmen::test::replay_fuzz_inputs;
using fulmen::ws::Inflater;
using Status = Inflater::Status;

TEST(FuzzRegressions, WsDeflate) {
  const std::string dir = FULMEN_FUZZ_DIR "/regressions/ws_deflate";
  ASSERT_TRUE(std::filesystem::is_regular_file(dir + "/README.md"));
  replay_fuzz_inputs(fuzz_inputs(dir));  // possibly none yet
}

// The seeds too: they are what the fuzzer starts from, so they must at least not trip it.
TEST(FuzzRegressions, WsDeflateSeeds) {
  const auto files = fuzz_inputs(FULMEN_FUZZ_DIR "/seeds/ws_deflate");
  ASSERT_GE(files.size(), 10u);
  replay_fuzz_inputs(files);
}

// What one message of a seed gives, inflated whole.
struct Message {
  Status status;
  std::string out;  // compared only when the status is kOk
};

// Decodes a seed as the harness reads it (byte 0 -> the split of the payload into two
// messages, byte 1 -> window, context takeover, limit), each message fed whole.
std::vector<Message> decode(const std::string& data) {
  fulmen::fuzz::Rng rng{uint32_t(uint8_t(data[0])) * 2654435761u | 1};
  const uint8_t opts = uint8_t(data[1]);
  const uint64_t max_message = (opts & 16) ? 0 : 1 + (opts >> 5) * 4096;
  const std::string_view payload = std::string_view(data).substr(2);
  const size_t split = payload.empty() ? 0 : rng.next() % (payload.size() + 1);
  Inflater inf(uint8_t(8 + (opts & 7)), opts & 8, max_message);
  std::vector<Message> r;
  for (std::string_view msg : {payload.substr(0, split), payload.substr(split)}) {
    Message m{Status::kOk, {}};
    m.status = inf.feed(msg, &m.out);
    if (m.status == Status::kOk) m.status = inf.finish(&m.out);
    r.push_back(m);
    if (m.status != Status::kOk) break;
  }
  return r;
}

std::string json_lines(size_t n) {  // the text gen_seeds.py compresses
  std::string s;
  for (int i = 0; i < 200; ++i)
    s += "{\"id\": " + std::to_string(i) + ", \"name\": \"user" + std::to_string(i % 7) +
         "\", \"tags\": [\"a\", \"b\", \"c\"]}\n";
  return s.substr(0, n);
}

std::string repeat(std::string_view s, size_t times) {
  std::string r;
  for (size_t i = 0; i < times; ++i) r += s;
  return r;
}

TEST(FuzzRegressions, WsDeflateSeedsDecodeAsNamed) {
  struct Case {
    const char* name;
    std::vector<Message> want;
  };
  const Message hello{Status::kOk, "Hello"}, nothing{Status::kOk, ""};
  const Message truncated{Status::kTruncated, ""};
  const Case cases[] = {
      {"seed-rfc-hello", {hello, nothing}},
      {"seed-rfc-context-takeover", {hello, hello}},
      {"seed-no-context-takeover", {hello, hello}},
      {"seed-rfc-stored-block", {hello, nothing}},
      {"seed-rfc-bfinal", {hello, hello}},
      {"seed-rfc-two-blocks", {hello, nothing}},
      {"seed-rfc-empty", {nothing, nothing}},
      {"seed-rsv1-empty-payload", {hello, truncated}},
      {"seed-fixed-huffman-window9", {{Status::kOk, repeat("abcabcabcabcabd", 30)}, nothing}},
      {"seed-bomb", {{Status::kTooBig, ""}}},
      {"seed-truncated", {truncated}},
      {"seed-bad-block-type", {{Status::kCorrupt, ""}}},
      {"seed-after-final", {{Status::kCorrupt, ""}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string data = read_file(FULMEN_FUZZ_DIR "/seeds/ws_deflate/" + std::string(c.name));
    ASSERT_GE(data.size(), 2u);
    const std::vector<Message> got = decode(data);
    ASSERT_EQ(got.size(), c.want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(int(got[i].status), int(c.want[i].status)) << "message " << i;
      if (c.want[i].status == Status::kOk) {
        EXPECT_EQ(got[i].out, c.want[i].out) << "message " << i;
      }
    }
  }
  // The pair the dynamic Huffman seed holds: 10 KiB of JSON lines, then a prefix of them that
  // the client compressed against the first message (gen_seeds.py picks its length).
  const std::string data = read_file(FULMEN_FUZZ_DIR "/seeds/ws_deflate/seed-dynamic-huffman-pair");
  const std::vector<Message> got = decode(data);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(int(got[0].status), int(Status::kOk));
  EXPECT_EQ(got[0].out, json_lines(SIZE_MAX));
  EXPECT_EQ(int(got[1].status), int(Status::kOk));
  EXPECT_GE(got[1].out.size(), 2000u);
  EXPECT_EQ(got[1].out, json_lines(got[1].out.size()));
}

}  // namespace
