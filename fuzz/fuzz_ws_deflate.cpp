// libFuzzer target for permessage-deflate (src/core/ws/deflate): the Inflater on hostile
// compressed payloads, and the Deflater -> Inflater round trip on arbitrary messages.
//
// Input layout: byte 0 seeds the split points, byte 1 picks the options (window bits, context
// takeover, a small or no size limit), the rest is the payload: inflated as two compressed
// messages (split at a point the RNG picks), and compressed as one plain message.
//
// Oracles (abort on violation): the payload fed in random exact-size pieces gives the same
// status and the same output as fed whole (with one documented exception, below), and never
// different bytes; output never passes max_message + 1 bytes; whatever the Deflater produces,
// the Inflater turns back into the message.
#include <algorithm>
#include <string>

#include "core/ws/deflate.hpp"
#include "fuzz_support.hpp"

using namespace fulmen::ws;
using namespace fulmen::fuzz;

namespace {

struct Outcome {
  Inflater::Status status = Inflater::Status::kOk;
  std::string out;
};

// Two messages (payload[0..split) and payload[split..)), each fed in pieces cut by `rng` when
// it is given, else whole.
Outcome inflate_two(Inflater& inf, std::string_view payload, size_t split, Rng* rng) {
  Outcome r;
  for (std::string_view msg : {payload.substr(0, split), payload.substr(split)}) {
    while (!msg.empty()) {
      const size_t n = rng ? 1 + rng->next() % msg.size() : msg.size();
      ExactBuf b(msg.data(), n);
      r.status = inf.feed({b.p, n}, &r.out);
      if (r.status != Inflater::Status::kOk) return r;
      msg.remove_prefix(n);
    }
    r.status = inf.finish(&r.out);
    if (r.status != Inflater::Status::kOk) return r;
  }
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Rng rng{uint32_t(data[0]) * 2654435761u | 1};
  const uint8_t opts = data[1];
  const uint8_t window = uint8_t(8 + (opts & 7));
  const bool no_context_takeover = opts & 8;
  const uint64_t max_message = (opts & 16) ? 0 : 1 + (opts >> 5) * 4096;
  const std::string_view payload(reinterpret_cast<const char*>(data + 2), size - 2);
  const size_t split = payload.empty() ? 0 : rng.next() % (payload.size() + 1);

  Inflater whole(window, no_context_takeover, max_message);
  Inflater pieces(window, no_context_takeover, max_message);
  const Outcome a = inflate_two(whole, payload, split, nullptr);
  const Outcome b = inflate_two(pieces, payload, split, &rng);
  // Never different bytes, whatever the split.
  const size_t common = std::min(a.out.size(), b.out.size());
  FUZZ_CHECK(a.out.compare(0, common, b.out, 0, common) == 0);
  // The same verdict too, except that a match beyond a window under 32 KiB (the client broke
  // its own limit) is caught or not depending on the split (see Inflater in deflate.hpp).
  const bool exact = window == 15;
  if (exact || (a.status != Inflater::Status::kCorrupt && b.status != Inflater::Status::kCorrupt)) {
    FUZZ_CHECK(a.status == b.status);
    FUZZ_CHECK(a.out == b.out);
  }
  if (max_message) FUZZ_CHECK(whole.message_size() <= max_message + 1);
  touch(a.out);

  // The round trip: any message, any window the server may be given.
  static Deflater deflater;  // one per thread, as in the server
  std::string compressed;
  if (deflater.compress(payload, window, &compressed)) {
    FUZZ_CHECK(compressed.size() < payload.size());
    Inflater inf(window, true, 0);
    std::string back;
    FUZZ_CHECK(inf.feed(compressed, &back) == Inflater::Status::kOk);
    FUZZ_CHECK(inf.finish(&back) == Inflater::Status::kOk);
    FUZZ_CHECK(back == payload);
  }
  return 0;
}
