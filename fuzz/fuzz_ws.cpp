// libFuzzer target for the WebSocket pieces: the client frame parser (with its UTF-8 checks),
// the UTF-8 validator on its own, the frame writer, and the handshake's list parsers.
//
// Input layout: byte 0 seeds the split points, byte 1 picks options, the rest is the stream of
// client frames. Every piece a "read" delivers is malloc'd at exactly its length and freed right
// after it is parsed, so ASan reports both over-reads and views that outlive their read. Every
// view is read.
//
// Oracles (abort on violation): a stream fed in random pieces must give exactly the frames, the
// error and the error offset of the same stream fed at once, also with binary payload left
// masked for the consumer (defer_binary_unmask, undone with copy_unmasked); consumed never exceeds what was
// given and kNone means all of it was used; views stay inside the bytes just consumed; the
// frames reported obey RFC 6455's rules (checked again here, independently); complete text
// messages are valid UTF-8; every data and close frame re-encoded by the writer parses back to
// itself; the validator agrees with a reference written from the definition, at any split.
//
// The regression test (tests/cpp/test_fuzz_regressions_ws.cpp) compiles this file and calls
// LLVMFuzzerTestOneInput on every file in fuzz/regressions/ws/.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/ws/frame.hpp"
#include "core/ws/handshake.hpp"
#include "core/ws/utf8.hpp"
#include "fuzz_support.hpp"

using namespace fulmen::ws;

using namespace fulmen::fuzz;

namespace {

struct Frame {
  Opcode opcode = Opcode::kContinuation;
  bool fin = false, rsv1 = false;
  uint64_t length = 0;
  std::string payload;
  bool message_end = false;
  uint16_t close_code = 0;
  std::string close_reason;
  bool operator==(const Frame&) const = default;
};

struct Trace {
  std::vector<Frame> frames;
  FrameError error = FrameError::kNone;
  size_t end = 0;  // error offset, or all bytes consumed
  bool operator==(const Trace&) const = default;
};

// Feeds in[0..n) to a parser in pieces whose ends `rng` picks (nullptr: all at once), and checks
// what it reports as it goes.
Trace run(const char* in, size_t n, const FrameOptions& opt, Rng* rng, bool tiny) {
  FrameParser parser(opt);
  Trace t;
  Frame cur;
  std::string message;  // the current data message, for the UTF-8 oracle
  bool open = false;    // independent fragmentation state
  Opcode message_op = Opcode::kText;
  bool message_rsv1 = false;
  uint64_t message_len = 0;
  size_t start = 0;
  while (start < n || (start == 0 && n == 0)) {
    size_t end = rng ? start + 1 + rng->next() % (tiny ? 4 : 64) : n;
    if (end > n) end = n;
    ExactBuf b(in + start, end - start);
    const size_t len = end - start;
    size_t pos = 0;
    for (;;) {
      FrameParser::Result r = parser.feed(b.p + pos, len - pos);
      FUZZ_CHECK(r.consumed <= len - pos);
      const size_t before = pos;
      pos += r.consumed;
      switch (r.event) {
        case FrameParser::Event::kNone:
          FUZZ_CHECK(pos == len);
          break;
        case FrameParser::Event::kError: {
          FUZZ_CHECK(r.error != FrameError::kNone);
          FUZZ_CHECK(close_code_valid(close_code_for(r.error)));
          FUZZ_CHECK(error_reason(r.error) != nullptr && strlen(error_reason(r.error)) <= 123);
          FrameParser::Result again = parser.feed(b.p + pos, len - pos);
          FUZZ_CHECK(again.event == FrameParser::Event::kError && again.error == r.error &&
                     again.consumed == 0);
          t.error = r.error;
          t.end = start + pos;
          return t;
        }
        case FrameParser::Event::kHeader: {
          const FrameHeader& h = parser.header();
          cur = Frame{};
          cur.opcode = h.opcode;
          cur.fin = h.fin;
          cur.rsv1 = h.rsv1;
          cur.length = h.length;
          // RFC 6455 5.2 / 5.4 / 5.5 / RFC 7692 6, checked again from the outside.
          FUZZ_CHECK(h.length < (uint64_t(1) << 63));
          if (is_control(h.opcode)) {
            FUZZ_CHECK(h.fin && h.length <= kMaxControlPayload && !h.rsv1);
          } else if (h.opcode == Opcode::kContinuation) {
            FUZZ_CHECK(open && !h.rsv1);
            message_len += h.length;
            open = !h.fin;
          } else {
            FUZZ_CHECK(!open && (h.opcode == Opcode::kText || h.opcode == Opcode::kBinary));
            FUZZ_CHECK(!h.rsv1 || opt.allow_rsv1);
            message_op = h.opcode;
            message_rsv1 = h.rsv1;
            message_len = h.length;
            message.clear();
            open = !h.fin;
          }
          if (!is_control(h.opcode)) {
            FUZZ_CHECK(opt.max_message == 0 || message_len <= opt.max_message);
            FUZZ_CHECK(parser.message_opcode() == message_op &&
                       parser.message_compressed() == message_rsv1);
            FUZZ_CHECK(parser.message_size() == message_len);
          }
          continue;
        }
        case FrameParser::Event::kData: {
          FUZZ_CHECK(!is_control(cur.opcode));
          // In place: the piece is exactly the bytes this call consumed.
          FUZZ_CHECK(r.payload.empty() ||
                     (r.payload.data() == b.p + before && r.payload.size() == r.consumed));
          touch(r.payload);
          std::string_view piece = r.payload;
          std::string plain;
          if (r.masked) {
            // Deferred unmasking: only for uncompressed binary, undone here with the phase given.
            FUZZ_CHECK(opt.defer_binary_unmask && message_op == Opcode::kBinary && !message_rsv1);
            plain.resize(r.payload.size());
            copy_unmasked(plain.data(), r.payload.data(), r.payload.size(), parser.header().mask,
                          r.mask_phase);
            piece = plain;
          } else {
            FUZZ_CHECK(r.payload.empty() || !opt.defer_binary_unmask ||
                       message_op != Opcode::kBinary || message_rsv1);
          }
          cur.payload.append(piece);
          message.append(piece);
          FUZZ_CHECK(cur.payload.size() <= cur.length);
          FUZZ_CHECK(!r.message_end || r.frame_end);
          if (r.frame_end) {
            FUZZ_CHECK(cur.payload.size() == cur.length);
            FUZZ_CHECK(r.message_end == cur.fin);
            cur.message_end = r.message_end;
            if (r.message_end && message_op == Opcode::kText && !message_rsv1 && opt.validate_utf8)
              FUZZ_CHECK(utf8_valid(message));
            t.frames.push_back(cur);
          }
          continue;
        }
        case FrameParser::Event::kControl: {
          FUZZ_CHECK(is_control(cur.opcode));
          FUZZ_CHECK(r.payload.size() == cur.length);
          touch(r.payload);
          touch(r.close_reason);
          cur.payload.assign(r.payload);
          if (cur.opcode == Opcode::kClose) {
            FUZZ_CHECK(r.close_code == close_code::kNoStatus ? r.payload.empty()
                                                             : close_code_valid(r.close_code));
            FUZZ_CHECK(utf8_valid(r.close_reason));
            cur.close_code = r.close_code;
            cur.close_reason.assign(r.close_reason);
          } else {
            FUZZ_CHECK(r.close_code == 0 && r.close_reason.empty());
          }
          t.frames.push_back(cur);
          continue;
        }
      }
      break;
    }
    start = end;
    if (n == 0) break;
  }
  t.end = n;
  return t;
}

// The writer's frame for `f`, masked as a client would send it, must parse back to `f`.
void round_trip(const Frame& f, const FrameOptions& opt) {
  std::string wire;
  if (f.opcode == Opcode::kClose) {
    CloseFrame c = make_close_frame(f.close_code, f.close_reason);
    wire.assign(c.view());
  } else {
    FrameHead h = make_frame_header(f.opcode, f.payload.size(), f.fin, f.rsv1);
    wire.assign(h.view());
    wire += f.payload;
  }
  const uint8_t key[4] = {0x5a, 0xc3, 0x00, 0xff};
  const size_t head = (static_cast<uint8_t>(wire[1]) & 0x7F) == 126   ? 4
                      : (static_cast<uint8_t>(wire[1]) & 0x7F) == 127 ? 10
                                                                      : 2;
  wire[1] = static_cast<char>(wire[1] | 0x80);
  wire.insert(head, reinterpret_cast<const char*>(key), 4);
  apply_mask(wire.data() + head + 4, wire.size() - head - 4, key);

  // A lone continuation or a non-final fragment needs the parser in the middle of a message.
  FrameOptions o = opt;
  o.max_message = 0;
  o.validate_utf8 = false;
  FrameParser p(o);
  std::string prefix;
  if (f.opcode == Opcode::kContinuation) {
    FrameHead h = make_frame_header(Opcode::kBinary, 0, false);
    prefix.assign(h.view());
    prefix[1] = static_cast<char>(prefix[1] | 0x80);
    prefix.append(reinterpret_cast<const char*>(key), 4);
  }
  std::string all = prefix + wire;
  ExactBuf b(all.data(), all.size());
  size_t pos = 0;
  Frame got;
  bool have = false;
  int headers = 0;
  for (;;) {
    FrameParser::Result r = p.feed(b.p + pos, all.size() - pos);
    pos += r.consumed;
    FUZZ_CHECK(r.event != FrameParser::Event::kError);
    if (r.event == FrameParser::Event::kNone) break;
    if (r.event == FrameParser::Event::kHeader) {
      if (++headers == 1 && !prefix.empty()) continue;
      got = Frame{};
      got.opcode = p.header().opcode;
      got.fin = p.header().fin;
      got.rsv1 = p.header().rsv1;
      got.length = p.header().length;
    } else if (r.event == FrameParser::Event::kData) {
      if (headers == 1 && !prefix.empty()) continue;
      got.payload.append(r.payload);
      if (r.frame_end) {
        got.message_end = r.message_end;
        have = true;
      }
    } else {
      got.payload.assign(r.payload);
      got.close_code = r.close_code;
      got.close_reason.assign(r.close_reason);
      have = true;
    }
  }
  FUZZ_CHECK(pos == all.size() && have);
  FUZZ_CHECK(got == f);
}

// UTF-8 by definition: which code points can a sequence prefix still become? Returns the
// offset of the first impossible byte, SIZE_MAX if none; *incomplete if it ends mid-sequence.
size_t utf8_reference(const uint8_t* s, size_t n, bool* incomplete) {
  *incomplete = false;
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t bits;
    if ((c & 0xE0) == 0xC0)
      len = 2, bits = c & 0x1F;
    else if ((c & 0xF0) == 0xE0)
      len = 3, bits = c & 0x0F;
    else if ((c & 0xF8) == 0xF0)
      len = 4, bits = c & 0x07;
    else
      return i;
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    const uint32_t max_cp = len == 2 ? 0x7FF : len == 3 ? 0xFFFF : 0x10FFFF;
    auto possible = [&](int have) {
      const int free_bits = 6 * (len - have);
      const uint32_t lo = bits << free_bits, hi = lo | ((1u << free_bits) - 1);
      const uint32_t a = std::max(lo, min_cp), b = std::min(hi, max_cp);
      return a <= b && !(a >= 0xD800 && b <= 0xDFFF);
    };
    if (!possible(1)) return i;
    for (int k = 1; k < len; ++k) {
      if (i + k == n) {
        *incomplete = true;
        return SIZE_MAX;
      }
      const uint8_t cc = s[i + k];
      if ((cc & 0xC0) != 0x80) return i + k;
      bits = (bits << 6) | (cc & 0x3F);
      if (!possible(k + 1)) return i + k;
    }
    i += len;
  }
  return SIZE_MAX;
}

void check_utf8(const char* in, size_t n, Rng& rng, bool tiny) {
  bool incomplete = false;
  const size_t want_bad = utf8_reference(reinterpret_cast<const uint8_t*>(in), n, &incomplete);
  Utf8Validator v;
  size_t start = 0, got_bad = SIZE_MAX;
  while (start < n) {
    size_t end = start + 1 + rng.next() % (tiny ? 4 : 64);
    if (end > n) end = n;
    ExactBuf b(in + start, end - start);
    size_t bad = SIZE_MAX;
    Utf8Validator::Status st = v.feed(b.p, end - start, &bad);
    if (st == Utf8Validator::Status::kInvalid) {
      FUZZ_CHECK(bad < end - start);
      got_bad = start + bad;
      break;
    }
    start = end;
  }
  FUZZ_CHECK(got_bad == want_bad);
  if (want_bad == SIZE_MAX)
    FUZZ_CHECK(v.status() ==
               (incomplete ? Utf8Validator::Status::kIncomplete : Utf8Validator::Status::kValid));
  FUZZ_CHECK(utf8_valid(std::string_view(in, n)) == (want_bad == SIZE_MAX && !incomplete));
}

// The stream as header values: the list parsers must keep every view inside its value.
void check_handshake(const char* in, size_t n) {
  const size_t third = n / 3;
  ExactBuf key(in, std::min<size_t>(n, 24));
  ExactBuf protocols(in, third);
  ExactBuf extensions(in + third, n - third);
  const std::string_view kv(key.p, std::min<size_t>(n, 24));
  const std::string_view pv(protocols.p, third), ev(extensions.p, n - third);
  fulmen::http1::Header hs[] = {
      {"Upgrade", "websocket"},  {"Connection", "Upgrade"},      {"Sec-WebSocket-Version", "13"},
      {"Sec-WebSocket-Key", kv}, {"Sec-WebSocket-Protocol", pv}, {"Sec-WebSocket-Extensions", ev},
  };
  static Handshake h;
  HandshakeError e = parse_upgrade(hs, sizeof hs / sizeof hs[0], h);
  FUZZ_CHECK(error_reason(e) != nullptr);
  auto inside = [](std::string_view v, std::string_view buf) {
    return v.empty() || (v.data() >= buf.data() && v.data() + v.size() <= buf.data() + buf.size());
  };
  FUZZ_CHECK(h.num_protocols <= kMaxSubprotocols && h.num_extensions <= kMaxExtensionOffers &&
             h.num_params <= kMaxExtensionParams);
  for (size_t k = 0; k < h.num_protocols; ++k) {
    FUZZ_CHECK(!h.protocols[k].empty() && inside(h.protocols[k], pv));
    touch(h.protocols[k]);
  }
  size_t params = 0;
  for (size_t k = 0; k < h.num_extensions; ++k) {
    const ExtensionOffer& o = h.extensions[k];
    FUZZ_CHECK(!o.name.empty() && inside(o.name, ev) && o.first_param == params);
    params += o.num_params;
    touch(o.name);
  }
  FUZZ_CHECK(params == h.num_params);
  for (size_t k = 0; k < h.num_params; ++k) {
    FUZZ_CHECK(!h.params[k].name.empty() && inside(h.params[k].name, ev) &&
               inside(h.params[k].value, ev));
    FUZZ_CHECK(h.params[k].has_value || h.params[k].value.empty());
    touch(h.params[k].name);
    touch(h.params[k].value);
  }
  if (e == HandshakeError::kNone) {
    FUZZ_CHECK(kv.size() == 24 && h.key == kv);
    AcceptValue a = compute_accept(h.key);
    touch(a.view());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Rng rng{0x9e3779b9u ^ (static_cast<uint32_t>(data[0]) * 0x01000193u)};
  const uint8_t flags = data[1];
  const char* in = reinterpret_cast<const char*>(data) + 2;
  const size_t n = size - 2;

  FrameOptions opt;
  opt.allow_rsv1 = flags & 1;
  opt.validate_utf8 = !(flags & 2);
  if (flags & 4) opt.max_message = (flags >> 3) & 15;  // tiny limits, 0 meaning none
  const bool tiny = flags & 0x80;

  const Trace whole = run(in, n, opt, nullptr, tiny);
  const Trace pieces = run(in, n, opt, &rng, tiny);
  FUZZ_CHECK(whole == pieces);
  // The same frames when binary payload is left masked for the consumer to unmask.
  FrameOptions deferred = opt;
  deferred.defer_binary_unmask = true;
  FUZZ_CHECK(run(in, n, deferred, &rng, tiny) == whole);
  for (const Frame& f : whole.frames) round_trip(f, opt);

  check_utf8(in, n, rng, tiny);
  check_handshake(in, n);
  return 0;
}
