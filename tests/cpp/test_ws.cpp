// WebSocket protocol pieces (src/core/ws): the UTF-8 validator, the frame parser and writer, and
// the opening handshake. Every valid input is replayed whole, at every two-way split, byte by
// byte and at random splits, and must give the same outcome each time; every rejection names its
// error, its close code and the byte it is reported at. Buffers end exactly at their allocation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "core/ws/base64.hpp"
#include "core/ws/frame.hpp"
#include "core/ws/handshake.hpp"
#include "core/ws/utf8.hpp"
#include "http1_support.hpp"

using namespace fulmen::ws;
using fulmen::test::ExactBuffer;

namespace {

// ---- UTF-8
// ----------------------------------------------------------------------------------------

using U8 = Utf8Validator::Status;

struct Utf8Outcome {
  U8 status = U8::kValid;
  size_t bad = 0;  // absolute offset of the refused byte, when kInvalid
  bool operator==(const Utf8Outcome&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Utf8Outcome& o) {
  const char* s = o.status == U8::kValid        ? "valid"
                  : o.status == U8::kIncomplete ? "incomplete"
                                                : "invalid";
  os << s;
  if (o.status == U8::kInvalid) os << " at " << o.bad;
  return os;
}

// Feeds `s` in pieces ending at `cuts` (ascending, each in (0, size)), each piece in its own
// exact-size buffer.
Utf8Outcome utf8_pieces(const std::string& s, const std::vector<size_t>& cuts) {
  Utf8Validator v;
  size_t start = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(s.size());
  for (size_t end : ends) {
    ExactBuffer b(s.data() + start, end - start);
    size_t bad = 0;
    U8 st = v.feed(b.p, end - start, &bad);
    if (st == U8::kInvalid) return {U8::kInvalid, start + bad};
    start = end;
  }
  return {v.status(), 0};
}

Utf8Outcome utf8_whole(const std::string& s) {
  return utf8_pieces(s, {});
}

// The reference the validator is held to, written from the definition rather than the byte
// table: decode each sequence's code point prefix and ask whether any completion of it is a
// scalar value in the range its length may encode. The first byte where none is possible is
// where the verdict must come.
Utf8Outcome utf8_reference(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
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
      return {U8::kInvalid, i};
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    const uint32_t max_cp = len == 2 ? 0x7FF : len == 3 ? 0xFFFF : 0x10FFFF;
    // Is there a valid code point whose encoding starts with the `have` bytes seen so far?
    auto possible = [&](int have) {
      const int free_bits = 6 * (len - have);
      const uint32_t lo = bits << free_bits;
      const uint32_t hi = lo | ((1u << free_bits) - 1);
      const uint32_t a = std::max(lo, min_cp), b = std::min(hi, max_cp);
      if (a > b) return false;
      return !(a >= 0xD800 && b <= 0xDFFF);  // all of it surrogates
    };
    if (!possible(1)) return {U8::kInvalid, i};
    for (int k = 1; k < len; ++k) {
      if (i + k == s.size()) return {U8::kIncomplete, 0};
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return {U8::kInvalid, i + k};
      bits = (bits << 6) | (cc & 0x3F);
      if (!possible(k + 1)) return {U8::kInvalid, i + k};
    }
    i += len;
  }
  return {U8::kValid, 0};
}

// Whole, every two-way split, byte by byte: all must agree with `want`.
void expect_utf8_all_splits(const std::string& s, const Utf8Outcome& want) {
  SCOPED_TRACE(::testing::PrintToString(s));
  EXPECT_EQ(utf8_whole(s), want);
  for (size_t k = 1; k < s.size(); ++k) EXPECT_EQ(utf8_pieces(s, {k}), want) << "split at " << k;
  std::vector<size_t> every;
  for (size_t k = 1; k < s.size(); ++k) every.push_back(k);
  EXPECT_EQ(utf8_pieces(s, every), want) << "byte by byte";
}

TEST(Utf8, ValidAcrossEverySplit) {
  const char* valid[] = {
      "",
      "Hello, world: plain ASCII longer than one eight-byte word",
      "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",  // "kosme" in Greek, Autobahn 6.2
      "\xc2\x80",                                      // U+0080, smallest 2-byte
      "\xdf\xbf",                                      // U+07FF
      "\xe0\xa0\x80",                                  // U+0800, smallest 3-byte
      "\xed\x9f\xbf",                                  // U+D7FF, just below the surrogates
      "\xee\x80\x80",                                  // U+E000, just above them
      "\xef\xbf\xbf",                                  // U+FFFF
      "\xf0\x90\x80\x80",                              // U+10000, smallest 4-byte
      "\xf4\x8f\xbf\xbf",                              // U+10FFFF, the largest
      "a\xe2\x82\xac"
      "bcdefghij\xf0\x9f\x98\x80xyz",  // mixed: euro sign, emoji
  };
  for (const char* s : valid) {
    expect_utf8_all_splits(s, {U8::kValid, 0});
    EXPECT_TRUE(utf8_valid(s));
  }
}

TEST(Utf8, RefusedAtTheFirstImpossibleByte) {
  struct Case {
    std::string in;
    size_t bad;
  } cases[] = {
      {"\x80", 0},  // lone continuation byte
      {"abc\xbf", 3},
      {"\xc0\x80", 0},  // C0/C1 only ever start overlongs
      {"\xc1\xbf", 0},
      {"\xe0\x80\x80", 1},  // overlong 3-byte: fails at the second byte
      {"\xe0\x9f\xbf", 1},
      {"\xf0\x80\x80\x80", 1},  // overlong 4-byte
      {"\xf0\x8f\xbf\xbf", 1},
      {"\xed\xa0\x80", 1},      // U+D800: every completion of ED A0 is a surrogate
      {"\xed\xbf\xbf", 1},      // U+DFFF
      {"\xf4\x90\x80\x80", 1},  // U+110000
      {"\xf5\x80\x80\x80", 0},  // F5..FF never start anything
      {"\xfe", 0},
      {"\xff", 0},
      {"\xc2\x41", 1},  // lead byte followed by ASCII
      {"\xe2\x82\x41", 2},
      {"\xf0\x9f\x98\x41", 3},
      {"\xe2\x82\xac\xac", 3},  // one continuation byte too many
      // Autobahn 6.4.1: valid text, then U+110000; refused at 0x90, not at the end.
      {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64", 12},
      // ASCII run long enough for the word-at-a-time path, then a bad byte.
      {"0123456789abcdef0123\xff", 20},
  };
  for (const Case& c : cases) {
    expect_utf8_all_splits(c.in, {U8::kInvalid, c.bad});
    EXPECT_EQ(utf8_reference(c.in), (Utf8Outcome{U8::kInvalid, c.bad}));
    EXPECT_FALSE(utf8_valid(c.in));
  }
}

TEST(Utf8, TruncatedIsIncompleteNotInvalid) {
  const char* truncated[] = {"\xc2", "\xe2\x82", "\xf0\x9f\x98", "abc\xe0\xa0", "\xf4\x8f\xbf"};
  for (const char* s : truncated) {
    expect_utf8_all_splits(s, {U8::kIncomplete, 0});
    EXPECT_FALSE(utf8_valid(s));
  }
  // And it completes in a later piece.
  Utf8Validator v;
  EXPECT_EQ(v.feed(std::string_view("\xe2")), U8::kIncomplete);
  EXPECT_EQ(v.feed(std::string_view("\x82")), U8::kIncomplete);
  EXPECT_EQ(v.feed(std::string_view("")), U8::kIncomplete);
  EXPECT_EQ(v.feed(std::string_view("\xac")), U8::kValid);
  EXPECT_EQ(v.status(), U8::kValid);
}

TEST(Utf8, InvalidIsStickyAndResetClearsIt) {
  Utf8Validator v;
  size_t bad = 99;
  EXPECT_EQ(v.feed(std::string_view("ab\xff"), &bad), U8::kInvalid);
  EXPECT_EQ(bad, 2u);
  EXPECT_EQ(v.feed(std::string_view("valid"), &bad), U8::kInvalid);
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(v.status(), U8::kInvalid);
  v.reset();
  EXPECT_EQ(v.status(), U8::kValid);
  EXPECT_EQ(v.feed(std::string_view("valid")), U8::kValid);
}

// Every string of one and two bytes, then every string of up to four bytes drawn from the bytes
// where the rules change, against the reference; whole and byte by byte.
TEST(Utf8, MatchesReferenceExhaustively) {
  std::string s;
  size_t checked = 0;
  for (int a = 0; a < 256; ++a) {
    s.assign(1, char(a));
    ASSERT_EQ(utf8_whole(s), utf8_reference(s)) << a;
    for (int b = 0; b < 256; ++b) {
      s.assign({char(a), char(b)});
      ASSERT_EQ(utf8_whole(s), utf8_reference(s)) << a << " " << b;
      ASSERT_EQ(utf8_pieces(s, {1}), utf8_reference(s)) << a << " " << b;
      ++checked;
    }
  }
  const uint8_t edges[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                           0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                           0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
  for (uint8_t a : edges)
    for (uint8_t b : edges)
      for (uint8_t c : edges)
        for (uint8_t d : edges) {
          s.assign({char(a), char(b), char(c), char(d)});
          const Utf8Outcome want = utf8_reference(s);
          ASSERT_EQ(utf8_whole(s), want) << ::testing::PrintToString(s);
          ASSERT_EQ(utf8_pieces(s, {1, 2, 3}), want) << ::testing::PrintToString(s);
          ++checked;
        }
  EXPECT_EQ(checked, 65536u + 25u * 25 * 25 * 25);
}

// The reference itself, on values worked out by hand, so the exhaustive test is not circular.
TEST(Utf8, ReferenceSanity) {
  EXPECT_EQ(utf8_reference("\xed\x9f\xbf"), (Utf8Outcome{U8::kValid, 0}));
  EXPECT_EQ(utf8_reference("\xed\xa0"), (Utf8Outcome{U8::kInvalid, 1}));
  EXPECT_EQ(utf8_reference("\xf4\x8f"), (Utf8Outcome{U8::kIncomplete, 0}));
  EXPECT_EQ(utf8_reference("\xf4\x90"), (Utf8Outcome{U8::kInvalid, 1}));
  EXPECT_EQ(utf8_reference("\xe0\x9f"), (Utf8Outcome{U8::kInvalid, 1}));
  EXPECT_EQ(utf8_reference("\xc1"), (Utf8Outcome{U8::kInvalid, 0}));
}

TEST(Utf8, RandomSplitsOfLongText) {
  std::mt19937 rng(6455);
  std::string text;
  const char* pieces[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "0123456789"};
  for (int k = 0; k < 400; ++k) text += pieces[rng() % 5];
  for (int round = 0; round < 200; ++round) {
    std::vector<size_t> cuts;
    for (size_t k = 1 + rng() % 13; k < text.size(); k += 1 + rng() % 13) cuts.push_back(k);
    ASSERT_EQ(utf8_pieces(text, cuts), (Utf8Outcome{U8::kValid, 0}));
    std::string bad = text;
    const size_t at = rng() % bad.size();
    bad[at] = '\xff';
    ASSERT_EQ(utf8_pieces(bad, cuts), (Utf8Outcome{U8::kInvalid, at}));
  }
}

// ---- frames
// ---------------------------------------------------------------------------------------

const char* error_name(FrameError e) {
  switch (e) {
    // clang-format off
#define N(x) case FrameError::x: return #x;
    N(kNone) N(kReservedBits) N(kUnknownOpcode) N(kFragmentedControl) N(kUnexpectedContinuation)
    N(kExpectedContinuation) N(kUnmasked) N(kControlTooLong) N(kLengthTopBit) N(kMessageTooBig)
    N(kCloseTooShort) N(kBadCloseCode) N(kInvalidUtf8)
#undef N
    // clang-format on
  }
  return "?";
}

// One frame as the parser reported it, its data pieces joined.
struct FrameRec {
  Opcode opcode = Opcode::kContinuation;
  bool fin = false, rsv1 = false;
  uint64_t length = 0;
  std::string payload;
  bool message_end = false;
  uint16_t close_code = 0;
  std::string close_reason;
  bool operator==(const FrameRec&) const = default;
};

// Everything a stream produced: the frames completed, then the error (if any) and the absolute
// offset just past the byte it was reported at.
struct Trace {
  std::vector<FrameRec> frames;
  FrameError error = FrameError::kNone;
  size_t end = 0;  // error offset, or bytes consumed in all
  bool operator==(const Trace&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Trace& t) {
  os << t.frames.size() << " frames";
  for (const FrameRec& f : t.frames)
    os << " [op " << int(f.opcode) << (f.fin ? " fin" : "") << " len " << f.length << " "
       << ::testing::PrintToString(f.payload.substr(0, 16)) << "]";
  return os << " " << error_name(t.error) << " at " << t.end;
}

// Feeds `in` in pieces ending at `cuts`, each in its own exact-size buffer, the way a connection
// would: call feed() until kNone, then wait for the next read.
Trace run_frames(const std::string& in, const std::vector<size_t>& cuts, const FrameOptions& opt) {
  FrameParser parser(opt);
  Trace t;
  FrameRec cur;
  std::vector<size_t> ends = cuts;
  ends.push_back(in.size());
  size_t start = 0;
  for (size_t end : ends) {
    ExactBuffer b(in.data() + start, end - start);
    size_t pos = 0;
    for (;;) {
      FrameParser::Result r = parser.feed(b.p + pos, b.n - pos);
      EXPECT_LE(r.consumed, b.n - pos);
      const size_t before = pos;
      pos += r.consumed;
      if (r.event == FrameParser::Event::kNone) {
        EXPECT_EQ(pos, b.n) << "kNone must mean all input was used";
        break;
      }
      if (r.event == FrameParser::Event::kError) {
        t.error = r.error;
        t.end = start + pos;
        // Sticky: the parser says the same again and takes nothing.
        FrameParser::Result again = parser.feed(b.p + pos, b.n - pos);
        EXPECT_EQ(again.event, FrameParser::Event::kError);
        EXPECT_EQ(again.error, r.error);
        EXPECT_EQ(again.consumed, 0u);
        return t;
      }
      if (r.event == FrameParser::Event::kHeader) {
        cur = FrameRec{};
        cur.opcode = parser.header().opcode;
        cur.fin = parser.header().fin;
        cur.rsv1 = parser.header().rsv1;
        cur.length = parser.header().length;
        continue;
      }
      if (r.event == FrameParser::Event::kData) {
        // Unmasked in place: the piece is the bytes just consumed.
        EXPECT_TRUE(r.payload.empty() || (r.payload.data() >= b.p + before &&
                                          r.payload.data() + r.payload.size() == b.p + pos));
        if (r.masked) {
          // defer_binary_unmask: still masked; unmask it the way a consumer would, by copying.
          EXPECT_TRUE(opt.defer_binary_unmask);
          EXPECT_EQ(parser.message_opcode(), Opcode::kBinary);
          EXPECT_FALSE(parser.message_compressed());
          std::string plain(r.payload.size(), '\0');
          copy_unmasked(plain.data(), r.payload.data(), r.payload.size(), parser.header().mask,
                        r.mask_phase);
          cur.payload.append(plain);
        } else {
          EXPECT_FALSE(opt.defer_binary_unmask && parser.message_opcode() == Opcode::kBinary &&
                       !parser.message_compressed() && !r.payload.empty())
              << "binary payload unmasked although the consumer asked to do it";
          cur.payload.append(r.payload);
        }
        EXPECT_FALSE(r.message_end && !r.frame_end);
        if (r.frame_end) {
          EXPECT_EQ(cur.payload.size(), cur.length);
          cur.message_end = r.message_end;
          EXPECT_EQ(r.message_end, cur.fin);
          t.frames.push_back(cur);
        }
        continue;
      }
      // kControl
      EXPECT_TRUE(is_control(cur.opcode));
      EXPECT_EQ(r.payload.size(), cur.length);
      cur.payload.assign(r.payload);
      cur.close_code = r.close_code;
      cur.close_reason.assign(r.close_reason);
      t.frames.push_back(cur);
    }
    start = end;
  }
  t.end = start;
  return t;
}

// Replays `in` whole, at two-way splits (all of them for short inputs), byte by byte and at 50
// random splits. All must agree; the agreed trace is returned.
Trace replay_all(const std::string& in, const FrameOptions& opt = {}) {
  const Trace whole = run_frames(in, {}, opt);
  std::vector<size_t> two;
  if (in.size() <= 4096) {
    for (size_t k = 1; k < in.size(); ++k) two.push_back(k);
  } else {
    for (size_t k = 1; k < 32; ++k) two.push_back(k);
    for (size_t k = in.size() - 32; k < in.size(); ++k) two.push_back(k);
  }
  for (size_t k : two) {
    Trace t = run_frames(in, {k}, opt);
    EXPECT_EQ(t, whole) << "split at " << k;
    if (!(t == whole)) return whole;
  }
  std::vector<size_t> every;
  for (size_t k = 1; k < in.size(); ++k) every.push_back(k);
  EXPECT_EQ(run_frames(in, every, opt), whole) << "byte by byte";
  std::mt19937 rng(static_cast<uint32_t>(in.size()));
  for (int round = 0; round < 50 && in.size() > 1; ++round) {
    std::vector<size_t> cuts;
    for (size_t k = 1 + rng() % 40; k < in.size(); k += 1 + rng() % 40) cuts.push_back(k);
    Trace t = run_frames(in, cuts, opt);
    EXPECT_EQ(t, whole) << "random round " << round;
    if (!(t == whole)) break;
  }
  return whole;
}

constexpr uint8_t kFin = 0x80;
constexpr uint8_t kRsv1 = 0x40;
const uint8_t kRfcKey[4] = {0x37, 0xfa, 0x21, 0x3d};  // the masking key of RFC 6455 5.7

// A client frame built byte by byte in the test, independent of the writer: first byte `b0`,
// the payload masked with `key`, the length in the shortest form or the one `form` forces
// (16 or 64). masked=false leaves out the MASK bit and the key.
std::string client_frame(uint8_t b0, const std::string& payload, const uint8_t key[4] = kRfcKey,
                         int form = 0, bool masked = true) {
  std::string f(1, char(b0));
  const uint8_t m = masked ? 0x80 : 0;
  const uint64_t n = payload.size();
  if (form == 0) form = n < 126 ? 7 : n <= 0xFFFF ? 16 : 64;
  if (form == 7) {
    f += char(m | n);
  } else if (form == 16) {
    f += char(m | 126);
    f += char(n >> 8);
    f += char(n & 0xFF);
  } else {
    f += char(m | 127);
    for (int k = 7; k >= 0; --k) f += char((n >> (8 * k)) & 0xFF);
  }
  if (!masked) return f + payload;
  f.append(reinterpret_cast<const char*>(key), 4);
  for (size_t i = 0; i < payload.size(); ++i) f += char(payload[i] ^ key[i % 4]);
  return f;
}

std::string bytes(std::initializer_list<int> v) {
  std::string s;
  for (int c : v) s += char(c);
  return s;
}

FrameRec data_frame(Opcode op, bool fin, const std::string& payload) {
  FrameRec f;
  f.opcode = op;
  f.fin = fin;
  f.length = payload.size();
  f.payload = payload;
  f.message_end = fin;
  return f;
}

FrameRec control_frame(Opcode op, const std::string& payload, uint16_t code = 0,
                       const std::string& reason = "") {
  FrameRec f;
  f.opcode = op;
  f.fin = true;
  f.length = payload.size();
  f.payload = payload;
  f.close_code = code;
  f.close_reason = reason;
  return f;
}

void expect_frames(const std::string& in, const std::vector<FrameRec>& want,
                   const FrameOptions& opt = {}) {
  Trace t = replay_all(in, opt);
  EXPECT_EQ(t.error, FrameError::kNone) << error_name(t.error) << " at " << t.end;
  EXPECT_EQ(t.end, in.size());
  EXPECT_EQ(t.frames, want) << t;
}

// The stream fails with `e` (and close code `code`) at the byte just before offset `at`.
void expect_frame_error(const std::string& in, FrameError e, uint16_t code, size_t at,
                        const FrameOptions& opt = {}) {
  Trace t = replay_all(in, opt);
  EXPECT_EQ(error_name(t.error), std::string(error_name(e))) << t;
  EXPECT_EQ(t.end, at) << t;
  EXPECT_EQ(close_code_for(e), code);
}

// RFC 6455 5.7, the examples, as a client must send them (masked).
TEST(WsFrames, Rfc6455Examples) {
  // "A single-frame masked text message"
  const std::string hello_masked =
      bytes({0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58});
  EXPECT_EQ(hello_masked,
            client_frame(kFin | 0x1, "Hello"));  // the test's builder agrees with the RFC
  expect_frames(hello_masked, {data_frame(Opcode::kText, true, "Hello")});

  // "A fragmented unmasked text message", masked as a client sends it: "Hel" + "lo".
  expect_frames(
      client_frame(0x01, "Hel") + client_frame(kFin | 0x0, "lo"),
      {data_frame(Opcode::kText, false, "Hel"), data_frame(Opcode::kContinuation, true, "lo")});

  // "Unmasked Ping request and masked Ping response": ping with "Hello", and the masked pong.
  expect_frames(client_frame(kFin | 0x9, "Hello"), {control_frame(Opcode::kPing, "Hello")});
  expect_frames(bytes({0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}),
                {control_frame(Opcode::kPong, "Hello")});

  // "256 bytes binary message in a single unmasked frame" (16-bit length) and 64 KiB (64-bit).
  std::string b256(256, '\0'), b64k(65536, '\0');
  for (size_t i = 0; i < b256.size(); ++i) b256[i] = char(i * 7);
  for (size_t i = 0; i < b64k.size(); ++i) b64k[i] = char(i * 13 + (i >> 8));
  const std::string f256 = client_frame(kFin | 0x2, b256);
  EXPECT_EQ(f256.substr(0, 4), bytes({0x82, 0xFE, 0x01, 0x00}));
  expect_frames(f256, {data_frame(Opcode::kBinary, true, b256)});
  const std::string f64k = client_frame(kFin | 0x2, b64k);
  EXPECT_EQ(f64k.substr(0, 10), bytes({0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0}));
  expect_frames(f64k, {data_frame(Opcode::kBinary, true, b64k)});
}

TEST(WsFrames, UnmaskedClientFrameIsRefused) {
  // RFC 6455 5.7's unmasked "Hello": fine from a server, a protocol error from a client.
  expect_frame_error(bytes({0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}), FrameError::kUnmasked, 1002,
                     2);
  expect_frame_error(client_frame(kFin | 0x9, "", kRfcKey, 0, false), FrameError::kUnmasked, 1002,
                     2);
}

TEST(WsFrames, LengthForms) {
  // Each boundary of the three forms, and non-minimal encodings (accepted: see frame.cpp).
  for (size_t n : {0, 1, 125, 126, 127, 65535, 65536}) {
    SCOPED_TRACE(n);
    std::string payload(n, 'x');
    expect_frames(client_frame(kFin | 0x2, payload), {data_frame(Opcode::kBinary, true, payload)});
  }
  expect_frames(client_frame(kFin | 0x1, "short", kRfcKey, 16),
                {data_frame(Opcode::kText, true, "short")});
  expect_frames(client_frame(kFin | 0x1, "short", kRfcKey, 64),
                {data_frame(Opcode::kText, true, "short")});
  expect_frames(client_frame(kFin | 0x2, std::string(300, 'y'), kRfcKey, 64),
                {data_frame(Opcode::kBinary, true, std::string(300, 'y'))});
  // 64-bit length with the top bit set: refused when the length is complete (byte 10).
  expect_frame_error(bytes({0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1}) + "keyk",
                     FrameError::kLengthTopBit, 1002, 10);
  FrameOptions unlimited;
  unlimited.max_message = 0;
  expect_frame_error(bytes({0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}),
                     FrameError::kLengthTopBit, 1002, 10, unlimited);
}

TEST(WsFrames, EmptyFrames) {
  expect_frames(client_frame(kFin | 0x1, ""), {data_frame(Opcode::kText, true, "")});
  expect_frames(
      client_frame(0x2, "") + client_frame(0x0, "") + client_frame(kFin | 0x0, "ab"),
      {data_frame(Opcode::kBinary, false, ""), data_frame(Opcode::kContinuation, false, ""),
       data_frame(Opcode::kContinuation, true, "ab")});
  expect_frames(client_frame(kFin | 0x9, "") + client_frame(kFin | 0xA, ""),
                {control_frame(Opcode::kPing, ""), control_frame(Opcode::kPong, "")});
  // An empty frame's kData is pending even when its header was the last byte of the input.
  FrameParser p;
  std::string f = client_frame(kFin | 0x2, "");
  FrameParser::Result r = p.feed(f.data(), f.size());
  EXPECT_EQ(r.event, FrameParser::Event::kHeader);
  EXPECT_EQ(r.consumed, f.size());
  r = p.feed(nullptr, 0);
  EXPECT_EQ(r.event, FrameParser::Event::kData);
  EXPECT_TRUE(r.frame_end && r.message_end);
  EXPECT_EQ(p.feed(nullptr, 0).event, FrameParser::Event::kNone);
}

TEST(WsFrames, ReservedBitsAndOpcodes) {
  expect_frame_error(client_frame(kFin | kRsv1 | 0x1, "a"), FrameError::kReservedBits, 1002, 1);
  expect_frame_error(client_frame(kFin | 0x20 | 0x1, "a"), FrameError::kReservedBits, 1002, 1);
  expect_frame_error(client_frame(kFin | 0x10 | 0x2, "a"), FrameError::kReservedBits, 1002, 1);
  for (int op : {0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF}) {
    SCOPED_TRACE(op);
    expect_frame_error(client_frame(kFin | op, "a"), FrameError::kUnknownOpcode, 1002, 1);
  }
  // After a valid frame the offset counts from the start of the stream.
  expect_frame_error(client_frame(kFin | 0x1, "ok") + client_frame(kFin | 0x3, ""),
                     FrameError::kUnknownOpcode, 1002, 9);
}

TEST(WsFrames, Rsv1OnlyWhenNegotiatedAndOnlyOnFirstDataFrame) {
  FrameOptions deflate;
  deflate.allow_rsv1 = true;
  FrameRec first = data_frame(Opcode::kText, false, "ab");
  first.rsv1 = true;
  expect_frames(client_frame(kRsv1 | 0x1, "ab") + client_frame(kFin | 0x0, "cd"),
                {first, data_frame(Opcode::kContinuation, true, "cd")}, deflate);
  // RFC 7692 6: not on continuation frames, not on control frames.
  expect_frame_error(client_frame(0x1, "ab") + client_frame(kFin | kRsv1 | 0x0, "cd"),
                     FrameError::kReservedBits, 1002, 9, deflate);
  expect_frame_error(client_frame(kFin | kRsv1 | 0x9, ""), FrameError::kReservedBits, 1002, 1,
                     deflate);
  // RSV2 stays reserved with deflate on.
  expect_frame_error(client_frame(kFin | 0x20 | 0x1, ""), FrameError::kReservedBits, 1002, 1,
                     deflate);
}

TEST(WsFrames, ControlFrameRules) {
  expect_frame_error(client_frame(0x9, "ping"), FrameError::kFragmentedControl, 1002, 1);
  expect_frame_error(client_frame(0x8, ""), FrameError::kFragmentedControl, 1002, 1);
  // 125 is the most a control frame may carry; 126 is refused at the length byte.
  const std::string p125(125, 'p');
  expect_frames(client_frame(kFin | 0x9, p125), {control_frame(Opcode::kPing, p125)});
  expect_frame_error(client_frame(kFin | 0x9, std::string(126, 'p')), FrameError::kControlTooLong,
                     1002, 2);
  expect_frame_error(client_frame(kFin | 0xA, std::string(70000, 'p')), FrameError::kControlTooLong,
                     1002, 2);
  // Even a small length in the 16-bit form: the 7-bit field says 126, which is too long.
  expect_frame_error(client_frame(kFin | 0x9, "tiny", kRfcKey, 16), FrameError::kControlTooLong,
                     1002, 2);
}

TEST(WsFrames, Fragmentation) {
  // Control frames may come between fragments; the message goes on after them.
  expect_frames(client_frame(0x1, "Hel") + client_frame(kFin | 0x9, "p1") + client_frame(0x0, "l") +
                    client_frame(kFin | 0xA, "") + client_frame(kFin | 0x0, "o"),
                {data_frame(Opcode::kText, false, "Hel"), control_frame(Opcode::kPing, "p1"),
                 data_frame(Opcode::kContinuation, false, "l"), control_frame(Opcode::kPong, ""),
                 data_frame(Opcode::kContinuation, true, "o")});
  // Continuation with no message open: at the start, and after a finished message.
  expect_frame_error(client_frame(kFin | 0x0, "x"), FrameError::kUnexpectedContinuation, 1002, 1);
  expect_frame_error(client_frame(0x0, "x"), FrameError::kUnexpectedContinuation, 1002, 1);
  expect_frame_error(client_frame(kFin | 0x1, "done") + client_frame(kFin | 0x0, "x"),
                     FrameError::kUnexpectedContinuation, 1002, 11);
  // A fragmented message closes with its FIN frame: then a new message, not a continuation.
  expect_frames(
      client_frame(0x1, "a") + client_frame(kFin | 0x0, "b") + client_frame(kFin | 0x1, "c"),
      {data_frame(Opcode::kText, false, "a"), data_frame(Opcode::kContinuation, true, "b"),
       data_frame(Opcode::kText, true, "c")});
  expect_frame_error(
      client_frame(0x1, "a") + client_frame(kFin | 0x0, "b") + client_frame(kFin | 0x0, "c"),
      FrameError::kUnexpectedContinuation, 1002, 15);
  // A new data frame while a fragmented message is open (also after an interleaved ping).
  expect_frame_error(client_frame(0x1, "ab") + client_frame(kFin | 0x1, "cd"),
                     FrameError::kExpectedContinuation, 1002, 9);
  expect_frame_error(
      client_frame(0x2, "ab") + client_frame(kFin | 0x9, "") + client_frame(0x2, "cd"),
      FrameError::kExpectedContinuation, 1002, 15);
  // The message opcode is carried over to its continuation frames.
  FrameParser p;
  std::string s = client_frame(0x2, "ab") + client_frame(kFin | 0x0, "cd");
  size_t pos = 0;
  int data_events = 0;
  for (;;) {
    FrameParser::Result r = p.feed(s.data() + pos, s.size() - pos);
    pos += r.consumed;
    if (r.event == FrameParser::Event::kNone) break;
    if (r.event == FrameParser::Event::kData) {
      ++data_events;
      EXPECT_EQ(p.message_opcode(), Opcode::kBinary);
    }
  }
  EXPECT_EQ(data_events, 2);
}

TEST(WsFrames, MessageSizeLimit) {
  FrameOptions opt;
  opt.max_message = 10;
  // N and N+1, in one frame and across fragments; refused at the byte that completes the length.
  expect_frames(client_frame(kFin | 0x2, std::string(10, 'a')),
                {data_frame(Opcode::kBinary, true, std::string(10, 'a'))}, opt);
  expect_frame_error(client_frame(kFin | 0x2, std::string(11, 'a')), FrameError::kMessageTooBig,
                     1009, 2, opt);
  expect_frames(
      client_frame(0x1, "12345") + client_frame(kFin | 0x0, "67890"),
      {data_frame(Opcode::kText, false, "12345"), data_frame(Opcode::kContinuation, true, "67890")},
      opt);
  expect_frame_error(client_frame(0x1, "12345") + client_frame(kFin | 0x0, "678901"),
                     FrameError::kMessageTooBig, 1009, 13, opt);
  // Control frames do not count; the count starts again with each message.
  expect_frames(
      client_frame(0x1, "12345") + client_frame(kFin | 0x9, "pingpingping") +
          client_frame(kFin | 0x0, "67890") + client_frame(kFin | 0x1, "0123456789"),
      {data_frame(Opcode::kText, false, "12345"), control_frame(Opcode::kPing, "pingpingping"),
       data_frame(Opcode::kContinuation, true, "67890"),
       data_frame(Opcode::kText, true, "0123456789")},
      opt);
  // The default, 16 MiB, judged on the announced length before any payload arrives.
  EXPECT_EQ(kDefaultMaxMessage, 16u * 1024 * 1024);
  const uint64_t n = kDefaultMaxMessage;
  std::string at_limit = bytes({0x82, 0xFF});
  for (int k = 7; k >= 0; --k) at_limit += char((n >> (8 * k)) & 0xFF);
  std::string over = at_limit;
  over[9] = char(over[9] + 1);
  FrameParser p;
  std::string in = at_limit + "kkkk";
  FrameParser::Result r = p.feed(in.data(), in.size());
  EXPECT_EQ(r.event, FrameParser::Event::kHeader);
  EXPECT_EQ(p.header().length, n);
  EXPECT_EQ(p.message_size(), n);
  expect_frame_error(over + "kkkk", FrameError::kMessageTooBig, 1009, 10);
}

TEST(WsFrames, CloseFrames) {
  // Empty: no status (1005). Code only. Code and UTF-8 reason.
  expect_frames(client_frame(kFin | 0x8, ""), {control_frame(Opcode::kClose, "", 1005)});
  expect_frames(client_frame(kFin | 0x8, bytes({0x03, 0xE8})),
                {control_frame(Opcode::kClose, bytes({0x03, 0xE8}), 1000)});
  const std::string reason = "bye \xe2\x82\xac";
  expect_frames(client_frame(kFin | 0x8, bytes({0x0F, 0xA0}) + reason),
                {control_frame(Opcode::kClose, bytes({0x0F, 0xA0}) + reason, 4000, reason)});
  // One byte: there is no 1-byte close payload.
  expect_frame_error(client_frame(kFin | 0x8, "\x03"), FrameError::kCloseTooShort, 1002, 7);
  // Every code that may be received, and the ones that may not (Autobahn 7.7.x and 7.9.x).
  for (int code : {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000,
                   3999, 4000, 4999}) {
    SCOPED_TRACE(code);
    const std::string payload = bytes({code >> 8, code & 0xFF});
    expect_frames(client_frame(kFin | 0x8, payload),
                  {control_frame(Opcode::kClose, payload, uint16_t(code))});
    EXPECT_TRUE(close_code_valid(uint16_t(code)));
  }
  for (int code : {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535}) {
    SCOPED_TRACE(code);
    expect_frame_error(client_frame(kFin | 0x8, bytes({code >> 8, code & 0xFF})),
                       FrameError::kBadCloseCode, 1002, 8);
    EXPECT_FALSE(close_code_valid(uint16_t(code)));
  }
  // A reason that is not UTF-8: 1007, at the end of the frame.
  expect_frame_error(client_frame(kFin | 0x8, bytes({0x03, 0xE8}) + "\xed\xa0\x80"),
                     FrameError::kInvalidUtf8, 1007, 11);
  expect_frame_error(client_frame(kFin | 0x8, bytes({0x03, 0xE8}) + "ab\xe2\x82"),
                     FrameError::kInvalidUtf8, 1007, 12);
  // parse_close_payload on its own.
  CloseInfo c = parse_close_payload(bytes({0x03, 0xE9}) + "going");
  EXPECT_EQ(c.code, 1001);
  EXPECT_EQ(c.reason, "going");
  EXPECT_EQ(c.error, FrameError::kNone);
}

TEST(WsFrames, TextUtf8FailsFast) {
  // Refused at the byte that makes it impossible (A0 after ED), not at the end of the frame.
  const std::string bad =
      "ab\xed\xa0\x80"
      "cd";
  expect_frame_error(client_frame(kFin | 0x1, bad), FrameError::kInvalidUtf8, 1007, 6 + 4);
  // Across fragments (and an interleaved ping), a character may be split between frames...
  expect_frames(client_frame(0x1, "\xe2\x82") + client_frame(kFin | 0x9, "") +
                    client_frame(kFin | 0x0, "\xac"),
                {data_frame(Opcode::kText, false, "\xe2\x82"), control_frame(Opcode::kPing, ""),
                 data_frame(Opcode::kContinuation, true, "\xac")});
  // ... but the message may not end inside one: refused at the last byte of the final frame.
  expect_frame_error(client_frame(0x1, "ok") + client_frame(kFin | 0x0, "\xe2\x82"),
                     FrameError::kInvalidUtf8, 1007, 8 + 8);
  // Autobahn 6.4.1: bad in the first fragment, at 0x90, before the later fragments arrive.
  expect_frame_error(
      client_frame(0x1, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80") +
          client_frame(kFin | 0x0, "edited"),
      FrameError::kInvalidUtf8, 1007, 6 + 13);
  // Binary is not checked; text with RSV1 (compressed) is checked after inflating, not here;
  // and validate_utf8 = false turns the check off.
  expect_frames(client_frame(kFin | 0x2, "\xff"), {data_frame(Opcode::kBinary, true, "\xff")});
  FrameOptions deflate;
  deflate.allow_rsv1 = true;
  FrameRec compressed = data_frame(Opcode::kText, true, "\xff\xfe");
  compressed.rsv1 = true;
  expect_frames(client_frame(kFin | kRsv1 | 0x1, "\xff\xfe"), {compressed}, deflate);
  FrameOptions no_check;
  no_check.validate_utf8 = false;
  expect_frames(client_frame(kFin | 0x1, "\xff"), {data_frame(Opcode::kText, true, "\xff")},
                no_check);
  // The validator starts afresh with each message.
  expect_frame_error(client_frame(kFin | 0x1, "fine") + client_frame(kFin | 0x1, "\x80"),
                     FrameError::kInvalidUtf8, 1007, 10 + 7);
}

TEST(WsFrames, ResetStartsAStreamAfresh) {
  FrameParser p;
  std::string bad = client_frame(kFin | 0x3, "");
  EXPECT_EQ(p.feed(bad.data(), bad.size()).event, FrameParser::Event::kError);
  p.reset();
  std::string good = client_frame(0x1, "a");
  EXPECT_EQ(p.feed(good.data(), good.size()).event, FrameParser::Event::kHeader);
  p.reset();  // mid-message: a continuation is unexpected again
  std::string cont = client_frame(kFin | 0x0, "b");
  FrameParser::Result r = p.feed(cont.data(), cont.size());
  EXPECT_EQ(r.error, FrameError::kUnexpectedContinuation);
}

// ---- writer
// ---------------------------------------------------------------------------------------

TEST(WsWriter, HeaderForms) {
  // RFC 6455 5.7's unmasked examples are exactly what a server sends.
  EXPECT_EQ(make_frame_header(Opcode::kText, 5).view(), bytes({0x81, 0x05}));
  EXPECT_EQ(make_frame_header(Opcode::kText, 3, false).view(), bytes({0x01, 0x03}));
  EXPECT_EQ(make_frame_header(Opcode::kContinuation, 2).view(), bytes({0x80, 0x02}));
  EXPECT_EQ(make_frame_header(Opcode::kPing, 5).view(), bytes({0x89, 0x05}));
  EXPECT_EQ(make_frame_header(Opcode::kBinary, 256).view(), bytes({0x82, 0x7E, 0x01, 0x00}));
  EXPECT_EQ(make_frame_header(Opcode::kBinary, 65536).view(),
            bytes({0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0}));
  // Form boundaries.
  EXPECT_EQ(make_frame_header(Opcode::kBinary, 125).view(), bytes({0x82, 125}));
  EXPECT_EQ(make_frame_header(Opcode::kBinary, 126).view(), bytes({0x82, 0x7E, 0x00, 126}));
  EXPECT_EQ(make_frame_header(Opcode::kBinary, 65535).view(), bytes({0x82, 0x7E, 0xFF, 0xFF}));
  EXPECT_EQ(make_frame_header(Opcode::kBinary, 0x0102030405060708ull).view(),
            bytes({0x82, 0x7F, 1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(make_frame_header(Opcode::kText, 0, true, true).view(), bytes({0xC1, 0x00}));
}

// A server frame as a client would have sent it: MASK bit set, key inserted, payload masked.
std::string as_client(const FrameHead& h, const std::string& payload, const uint8_t key[4]) {
  std::string f(h.view());
  f[1] = char(f[1] | 0x80);
  f.append(reinterpret_cast<const char*>(key), 4);
  for (size_t i = 0; i < payload.size(); ++i) f += char(payload[i] ^ key[i % 4]);
  return f;
}

TEST(WsWriter, RoundTripThroughTheParser) {
  const uint8_t key[4] = {0xA5, 0x00, 0xFF, 0x3C};
  FrameOptions deflate;
  deflate.allow_rsv1 = true;
  for (size_t n : {0, 1, 7, 125, 126, 127, 1000, 65535, 65536, 70001}) {
    SCOPED_TRACE(n);
    std::string payload(n, '\0');
    for (size_t i = 0; i < n; ++i) payload[i] = char('a' + i % 26);
    for (Opcode op : {Opcode::kText, Opcode::kBinary}) {
      Trace t = run_frames(as_client(make_frame_header(op, n), payload, key), {}, deflate);
      EXPECT_EQ(t.error, FrameError::kNone);
      EXPECT_EQ(t.frames, std::vector<FrameRec>{data_frame(op, true, payload)});
    }
    FrameRec rsv = data_frame(Opcode::kBinary, false, payload);
    rsv.rsv1 = true;
    Trace t = run_frames(
        as_client(make_frame_header(Opcode::kBinary, n, false, true), payload, key), {}, deflate);
    EXPECT_EQ(t.frames, std::vector<FrameRec>{rsv});
  }
}

TEST(WsWriter, CloseFrames) {
  EXPECT_EQ(make_close_frame(1000, "bye").view(), bytes({0x88, 0x05, 0x03, 0xE8}) + "bye");
  EXPECT_EQ(make_close_frame(1001).view(), bytes({0x88, 0x02, 0x03, 0xE9}));
  EXPECT_EQ(make_close_frame(close_code::kNoStatus, "ignored").view(), bytes({0x88, 0x00}));
  // Long reasons are cut to 123 bytes, and never inside a character.
  const std::string ascii(200, 'r');
  CloseFrame f = make_close_frame(1011, ascii);
  EXPECT_EQ(f.size, 127);
  EXPECT_EQ(f.view().substr(4), ascii.substr(0, 123));
  const std::string euro = "\xe2\x82\xac";
  for (size_t lead = 119; lead <= 123; ++lead) {
    SCOPED_TRACE(lead);
    const std::string reason = std::string(lead, 'a') + euro + euro;
    CloseFrame g = make_close_frame(1000, reason);
    std::string_view got = g.view().substr(4);
    const size_t fits = lead + (123 - lead) / 3 * 3;  // whole characters that fit in 123
    EXPECT_EQ(got.size(), std::min(fits, reason.size()));
    EXPECT_EQ(got, std::string_view(reason).substr(0, got.size()));
    EXPECT_TRUE(utf8_valid(got));
    EXPECT_EQ(static_cast<uint8_t>(g.bytes[1]), got.size() + 2);
  }
  // Round trip: what the writer sends, a parser reads back with the same code and reason.
  const uint8_t key[4] = {1, 2, 3, 4};
  const std::string reason = "server \xe2\x82\xac shutting down";
  CloseFrame h = make_close_frame(close_code::kServiceRestart, reason);
  std::string_view payload = h.view().substr(2);
  Trace t = run_frames(
      as_client(make_frame_header(Opcode::kClose, payload.size()), std::string(payload), key), {},
      {});
  ASSERT_EQ(t.frames.size(), 1u);
  EXPECT_EQ(t.frames[0].close_code, 1012);
  EXPECT_EQ(t.frames[0].close_reason, reason);
}

TEST(WsWriter, ApplyMaskAtEveryPhase) {
  const uint8_t key[4] = {0x11, 0x22, 0x44, 0x88};
  std::string src(37, '\0');
  for (size_t i = 0; i < src.size(); ++i) src[i] = char(i * 31);
  for (size_t phase = 0; phase < 4; ++phase) {
    for (size_t n = 0; n <= src.size(); ++n) {
      std::string got = src.substr(0, n);
      apply_mask(got.data(), n, key, phase);
      for (size_t i = 0; i < n; ++i)
        ASSERT_EQ(uint8_t(got[i]), uint8_t(src[i] ^ key[(phase + i) % 4])) << phase << " " << i;
    }
  }
}

TEST(WsWriter, CopyUnmaskedAtEveryPhaseAndAlignment) {
  const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
  std::string src(300, '\0');
  for (size_t i = 0; i < src.size(); ++i) src[i] = char(i * 131 + 7);
  for (size_t phase = 0; phase < 4; ++phase) {
    for (size_t off = 0; off < 8; ++off) {  // unaligned source and destination
      for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(31),
                       size_t(64), size_t(255), size_t(291)}) {
        std::string dst(n + 16, '\x55');
        copy_unmasked(dst.data() + (7 - off % 8), src.data() + off, n, key, phase);
        for (size_t i = 0; i < n; ++i)
          ASSERT_EQ(uint8_t(dst[7 - off % 8 + i]), uint8_t(src[off + i] ^ key[(phase + i) % 4]))
              << phase << " " << off << " " << n << " " << i;
        for (size_t i = 0; i < 7 - off % 8; ++i) ASSERT_EQ(dst[i], '\x55') << "wrote before dst";
        for (size_t i = 7 - off % 8 + n; i < dst.size(); ++i) ASSERT_EQ(dst[i], '\x55') << "wrote past n";
      }
    }
  }
}

// With defer_binary_unmask the parser reports the same frames at every split (run_frames
// unmasks the deferred pieces with copy_unmasked and the phase they carry), leaves binary
// payload masked, and still unmasks text, control and compressed payload itself.
TEST(WsFrames, DeferredBinaryUnmaskMatchesInPlace) {
  const uint8_t key[4] = {0x01, 0x80, 0xfe, 0x7f};
  std::string big(70000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char(i * 7 + i / 251);
  const std::string stream =
      client_frame(kFin | 0x2, std::string("\x00\x01\x02\xff", 4), key) +   // whole binary
      client_frame(0x2, "abcde", key) + client_frame(kFin | 0x9, "ping", key) +  // fragmented,
      client_frame(0x0, "fgh", key) + client_frame(kFin | 0x0, "ijklmnop", key) +  // odd phases
      client_frame(kFin | 0x1, "text \xc3\xa9", key) +                          // text: unmasked
      client_frame(kFin | 0x2, "", key) +                                       // empty binary
      client_frame(kFin | 0x2, big, key, 64);                                   // 64-bit length
  FrameOptions deferred;
  deferred.defer_binary_unmask = true;
  const Trace in_place = run_frames(stream, {}, FrameOptions{});
  EXPECT_EQ(in_place.error, FrameError::kNone);
  EXPECT_EQ(in_place.frames.size(), 8u);
  EXPECT_EQ(replay_all(stream, deferred), in_place);
  // Compressed binary (RSV1) is never deferred: the inflater needs it plain.
  FrameOptions rsv1 = deferred;
  rsv1.allow_rsv1 = true;
  FrameOptions rsv1_in_place;
  rsv1_in_place.allow_rsv1 = true;
  const std::string compressed = client_frame(kFin | 0x40 | 0x2, "not really deflate", key);
  EXPECT_EQ(run_frames(compressed, {}, rsv1), run_frames(compressed, {}, rsv1_in_place));
  FrameParser p(deferred);
  std::string one = client_frame(kFin | 0x2, "abcdef", key);
  FrameParser::Result r = p.feed(one.data(), one.size());
  ASSERT_EQ(r.event, FrameParser::Event::kHeader);
  r = p.feed(one.data() + r.consumed, one.size() - r.consumed);
  ASSERT_EQ(r.event, FrameParser::Event::kData);
  EXPECT_TRUE(r.masked);
  EXPECT_EQ(r.mask_phase, 0);
  EXPECT_NE(r.payload, "abcdef");  // still masked
}

// No heap allocation while parsing or writing frames: the steady state of a connection.
TEST(WsFrames, NoAllocation) {
  std::string stream;
  for (int k = 0; k < 50; ++k) {
    stream += client_frame(0x1, "fragment \xe2\x82") + client_frame(kFin | 0x9, "ping") +
              client_frame(kFin | 0x0, "\xac end") +
              client_frame(kFin | 0x2, std::string(300, 'b'));
  }
  stream += client_frame(kFin | 0x8, bytes({0x03, 0xE8}) + "done");
  FrameParser parser;
  size_t pos = 0, events = 0;
  // Through a pointer: GCC 12 with -fsanitize=null miscompiles the null check of a direct store
  // to this extern thread_local (it branches on flags from the TLS-init-function test) and UBSan
  // reports a null store that does not happen.
  bool* const counting = &fulmen::test::t_count_allocs;
  fulmen::test::g_counted_allocs = 0;
  *counting = true;
  while (pos < stream.size()) {
    const size_t n = std::min<size_t>(stream.size() - pos, 17);  // a slow reader
    size_t used = 0;
    for (;;) {
      FrameParser::Result r = parser.feed(stream.data() + pos + used, n - used);
      used += r.consumed;
      if (r.event == FrameParser::Event::kNone || r.event == FrameParser::Event::kError) break;
      ++events;
    }
    pos += n;
  }
  FrameHead h = make_frame_header(Opcode::kText, 70000);
  CloseFrame c = make_close_frame(1000, "bye");
  *counting = false;
  EXPECT_EQ(fulmen::test::g_counted_allocs.load(), 0u);
  EXPECT_EQ(h.size, 10);
  EXPECT_EQ(c.size, 7);
  EXPECT_GT(events, 50u * 6);
}

// ---- handshake
// ------------------------------------------------------------------------------------

using fulmen::http1::Header;

std::string b64(const std::string& in) {
  std::string out(base64_encoded_size(in.size()), '\0');
  EXPECT_EQ(base64_encode(reinterpret_cast<const uint8_t*>(in.data()), in.size(), out.data()),
            out.size());
  return out;
}

// Decoded bytes, or "<invalid>".
std::string unb64(const std::string& in) {
  uint8_t out[64];
  ptrdiff_t n = base64_decode(in, out, sizeof out);
  if (n < 0) return "<invalid>";
  return std::string(reinterpret_cast<const char*>(out), size_t(n));
}

TEST(WsBase64, Rfc4648Vectors) {
  const std::pair<const char*, const char*> v[] = {{"", ""},
                                                   {"f", "Zg=="},
                                                   {"fo", "Zm8="},
                                                   {"foo", "Zm9v"},
                                                   {"foob", "Zm9vYg=="},
                                                   {"fooba", "Zm9vYmE="},
                                                   {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, enc] : v) {
    EXPECT_EQ(b64(plain), enc);
    EXPECT_EQ(unb64(enc), plain);
  }
  EXPECT_EQ(b64(bytes({0xFB, 0xFF, 0xBF})), "+/+/");
  EXPECT_EQ(unb64("+/+/"), bytes({0xFB, 0xFF, 0xBF}));
}

TEST(WsBase64, DecoderIsStrict) {
  for (const char* bad : {"Zg=", "Zg", "Zh==", "Zm9=", "Z===", "====", "Zg==Zg==", "Zm9v\n", "Zm 9",
                          "Zm-v", "Zm_v", "Zm9vY===", "=Zm9"}) {
    EXPECT_EQ(unb64(bad), "<invalid>") << bad;
  }
  uint8_t out[2];
  EXPECT_EQ(base64_decode("Zm9v", out, sizeof out), -1);  // 3 bytes do not fit in 2
  EXPECT_EQ(base64_decode("Zm8=", out, sizeof out), 2);
}

TEST(WsHandshake, Rfc6455AcceptExample) {
  // RFC 6455 1.3 and 4.2.2: the sample nonce, the SHA-1 bytes it lists, and their base64.
  const AcceptValue a = compute_accept("dGhlIHNhbXBsZSBub25jZQ==");
  EXPECT_EQ(a.view(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  EXPECT_EQ(unb64(std::string(a.view())),
            bytes({0xb3, 0x7a, 0x4f, 0x2c, 0xc0, 0x62, 0x4f, 0x16, 0x90, 0xf6,
                   0x46, 0x06, 0xcf, 0x38, 0x59, 0x45, 0xb2, 0xbe, 0xc4, 0xea}));
  // A second nonce, its value computed independently with Python's hashlib and base64.
  EXPECT_EQ(compute_accept("x3JJHMbDL1EzLkh9GBhXDw==").view(), "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
}

// The RFC 6455 4.1 example request, split by the real HTTP/1 parser.
const char kRfcRequest[] =
    "GET /chat HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

TEST(WsHandshake, Rfc6455RequestThroughTheHttpParser) {
  auto check = [](std::string text, HandshakeError want) {
    fulmen::http1::Limits lim;
    Header hs[32];
    fulmen::http1::Request req;
    req.headers = hs;
    req.headers_capacity = 32;
    fulmen::http1::ParseError perr{};
    size_t scan = 0;
    ASSERT_GT(fulmen::http1::parse_request_head(text.data(), text.size(), lim, req, &perr, &scan),
              0);
    Handshake h;
    EXPECT_EQ(parse_upgrade(req, h), want) << text;
    if (want != HandshakeError::kNone) return;
    EXPECT_EQ(h.key, "dGhlIHNhbXBsZSBub25jZQ==");
    EXPECT_EQ(compute_accept(h.key).view(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    ASSERT_EQ(h.num_protocols, 2u);
    EXPECT_EQ(h.protocols[0], "chat");
    EXPECT_EQ(h.protocols[1], "superchat");
    EXPECT_EQ(h.num_extensions, 0u);
  };
  const std::string rfc = kRfcRequest;
  check(rfc, HandshakeError::kNone);
  check("POST" + rfc.substr(3), HandshakeError::kNotGet);
  std::string v10 = rfc;
  v10.replace(v10.find("HTTP/1.1"), 8, "HTTP/1.0");
  check(v10, HandshakeError::kBadHttpVersion);
}

struct Req {
  std::vector<std::pair<std::string, std::string>> fields;
  Req& add(std::string n, std::string v) {
    fields.emplace_back(std::move(n), std::move(v));
    return *this;
  }
  Req& drop(const std::string& n) {
    std::erase_if(fields, [&](const auto& f) { return f.first == n; });
    return *this;
  }
  Req& set(const std::string& n, std::string v) { return drop(n).add(n, std::move(v)); }
  // The views in `h` point into `fields`: keep the Req alive while `h` is used.
  HandshakeError parse(Handshake& h) const {
    std::vector<Header> hs;
    for (const auto& f : fields) hs.push_back(Header{f.first, f.second});
    return parse_upgrade(hs.data(), hs.size(), h);
  }
  HandshakeError parse() const {
    Handshake h;
    return parse(h);
  }
};

Req good_request() {
  return Req()
      .add("Host", "example.com")
      .add("Upgrade", "websocket")
      .add("Connection", "Upgrade")
      .add("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
      .add("Sec-WebSocket-Version", "13");
}

TEST(WsHandshake, UpgradeAndConnectionTokens) {
  EXPECT_EQ(good_request().parse(), HandshakeError::kNone);
  // Case-insensitive names and tokens, token lists, several fields.
  EXPECT_EQ(good_request().drop("Upgrade").add("UPGRADE", "WebSocket").parse(),
            HandshakeError::kNone);
  EXPECT_EQ(good_request().set("Upgrade", "h2c, websocket").parse(), HandshakeError::kNone);
  EXPECT_EQ(good_request().set("Connection", "keep-alive, Upgrade").parse(), HandshakeError::kNone);
  EXPECT_EQ(good_request().set("Connection", "keep-alive").add("connection", "UPGRADE").parse(),
            HandshakeError::kNone);
  // Missing or not a whole token.
  EXPECT_EQ(good_request().drop("Upgrade").parse(), HandshakeError::kNoUpgradeWebSocket);
  EXPECT_EQ(good_request().set("Upgrade", "h2c").parse(), HandshakeError::kNoUpgradeWebSocket);
  EXPECT_EQ(good_request().set("Upgrade", "websocket2").parse(),
            HandshakeError::kNoUpgradeWebSocket);
  EXPECT_EQ(good_request().drop("Connection").parse(), HandshakeError::kNoConnectionUpgrade);
  EXPECT_EQ(good_request().set("Connection", "keep-alive").parse(),
            HandshakeError::kNoConnectionUpgrade);
  EXPECT_EQ(good_request().set("Connection", "upgrades").parse(),
            HandshakeError::kNoConnectionUpgrade);
  EXPECT_EQ(error_status(HandshakeError::kNoUpgradeWebSocket), 400);
  EXPECT_EQ(error_status(HandshakeError::kNoConnectionUpgrade), 400);
}

TEST(WsHandshake, VersionMustBe13) {
  EXPECT_EQ(good_request().drop("Sec-WebSocket-Version").parse(), HandshakeError::kBadVersion);
  for (const char* v : {"8", "12", "14", "013", "13, 8", ""}) {
    EXPECT_EQ(good_request().set("Sec-WebSocket-Version", v).parse(), HandshakeError::kBadVersion)
        << v;
  }
  EXPECT_EQ(good_request().add("Sec-WebSocket-Version", "8").parse(), HandshakeError::kBadVersion);
  EXPECT_EQ(error_status(HandshakeError::kBadVersion), 426);
  EXPECT_EQ(kSupportedVersion, "13");
}

TEST(WsHandshake, KeyMustBeBase64Of16Bytes) {
  auto with_key = [](const std::string& k) {
    return good_request().set("Sec-WebSocket-Key", k).parse();
  };
  EXPECT_EQ(good_request().drop("Sec-WebSocket-Key").parse(), HandshakeError::kMissingKey);
  EXPECT_EQ(with_key(b64(std::string(16, '\x01'))), HandshakeError::kNone);
  EXPECT_EQ(with_key(b64(std::string(16, '\xff'))), HandshakeError::kNone);
  EXPECT_EQ(with_key(b64(std::string(15, 'a'))),
            HandshakeError::kBadKey);  // 20 characters, no padding
  EXPECT_EQ(with_key(b64(std::string(17, 'a'))),
            HandshakeError::kBadKey);  // 24 characters, one '='
  EXPECT_EQ(with_key(b64(std::string(18, 'a'))), HandshakeError::kBadKey);
  EXPECT_EQ(with_key(b64(std::string(32, 'a'))), HandshakeError::kBadKey);
  EXPECT_EQ(with_key(""), HandshakeError::kBadKey);
  EXPECT_EQ(with_key("dGhlIHNhbXBsZSBub25jZR=="),
            HandshakeError::kBadKey);  // leftover bits not zero
  EXPECT_EQ(with_key("dGhlIHNhbXBsZSBub25jZQ="), HandshakeError::kBadKey);
  EXPECT_EQ(with_key("dGhlIHNhbXBsZSBub25jZQ"), HandshakeError::kBadKey);
  EXPECT_EQ(with_key("dGhlIHNhbXBsZSBub25j*Q=="), HandshakeError::kBadKey);
  EXPECT_EQ(with_key("the sample nonce"), HandshakeError::kBadKey);  // 16 bytes, not encoded
  // Sent twice, even with the same value: which one would the accept answer?
  EXPECT_EQ(good_request().add("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==").parse(),
            HandshakeError::kBadKey);
  EXPECT_EQ(error_status(HandshakeError::kMissingKey), 400);
  EXPECT_EQ(error_status(HandshakeError::kBadKey), 400);
}

TEST(WsHandshake, ChecksRunInAFixedOrder) {
  // Bad version and no key: 426 (the version is checked first), whatever the header order.
  Req r = good_request().drop("Sec-WebSocket-Key").set("Sec-WebSocket-Version", "8");
  EXPECT_EQ(r.parse(), HandshakeError::kBadVersion);
  std::reverse(r.fields.begin(), r.fields.end());
  EXPECT_EQ(r.parse(), HandshakeError::kBadVersion);
  // No Upgrade token beats everything else.
  EXPECT_EQ(good_request().drop("Upgrade").set("Sec-WebSocket-Version", "8").parse(),
            HandshakeError::kNoUpgradeWebSocket);
  // A bad key beats a bad extension header.
  EXPECT_EQ(
      good_request().set("Sec-WebSocket-Key", "x").add("Sec-WebSocket-Extensions", ";;").parse(),
      HandshakeError::kBadKey);
}

TEST(WsHandshake, Subprotocols) {
  Handshake h;
  const Req two_fields = good_request()
                             .add("Sec-WebSocket-Protocol", "chat, superchat")
                             .add("sec-websocket-protocol", " v2.chat ");
  ASSERT_EQ(two_fields.parse(h), HandshakeError::kNone);
  ASSERT_EQ(h.num_protocols, 3u);
  EXPECT_EQ(h.protocols[0], "chat");
  EXPECT_EQ(h.protocols[1], "superchat");
  EXPECT_EQ(h.protocols[2], "v2.chat");
  // Empty list elements are skipped (RFC 9110 5.6.1).
  const Req empty_elements = good_request().add("Sec-WebSocket-Protocol", ",a ,, b,");
  ASSERT_EQ(empty_elements.parse(h), HandshakeError::kNone);
  ASSERT_EQ(h.num_protocols, 2u);
  EXPECT_EQ(h.protocols[0], "a");
  EXPECT_EQ(h.protocols[1], "b");
  for (const char* bad : {"chat;v=1", "ch at", "chat/1", "\"chat\"", "a,b c"}) {
    EXPECT_EQ(good_request().add("Sec-WebSocket-Protocol", bad).parse(),
              HandshakeError::kBadProtocols)
        << bad;
  }
  // kMaxSubprotocols and one more.
  std::string list;
  for (size_t k = 0; k < kMaxSubprotocols; ++k) list += (k ? ",p" : "p") + std::to_string(k);
  const Req at_limit = good_request().add("Sec-WebSocket-Protocol", list);
  ASSERT_EQ(at_limit.parse(h), HandshakeError::kNone);
  EXPECT_EQ(h.num_protocols, kMaxSubprotocols);
  EXPECT_EQ(h.protocols[kMaxSubprotocols - 1], "p" + std::to_string(kMaxSubprotocols - 1));
  EXPECT_EQ(good_request().add("Sec-WebSocket-Protocol", list + ",one-more").parse(),
            HandshakeError::kTooManyProtocols);
  EXPECT_EQ(error_status(HandshakeError::kTooManyProtocols), 400);
}

std::string param_str(const Handshake& h, const ExtensionOffer& o) {
  std::string s(o.name);
  for (size_t k = o.first_param; k < size_t(o.first_param) + o.num_params; ++k) {
    const ExtensionParam& p = h.params[k];
    s += ";" + std::string(p.name);
    if (p.has_value) s += "=" + std::string(p.value) + (p.escaped ? "(escaped)" : "");
  }
  return s;
}

TEST(WsHandshake, ExtensionOffers) {
  Handshake h;
  // RFC 7692 5 style offers: a preferred one with parameters, then a fallback.
  const Req offers3 =
      good_request()
          .add("Sec-WebSocket-Extensions",
               "permessage-deflate; client_no_context_takeover; server_max_window_bits=10 , "
               "permessage-deflate")
          .add("Sec-WebSocket-Extensions", "permessage-deflate;client_max_window_bits");
  ASSERT_EQ(offers3.parse(h), HandshakeError::kNone);
  ASSERT_EQ(h.num_extensions, 3u);
  EXPECT_EQ(param_str(h, h.extensions[0]),
            "permessage-deflate;client_no_context_takeover;server_max_window_bits=10");
  EXPECT_EQ(param_str(h, h.extensions[1]), "permessage-deflate");
  EXPECT_EQ(param_str(h, h.extensions[2]), "permessage-deflate;client_max_window_bits");
  EXPECT_EQ(h.num_params, 3u);
  // Quoted values (the content must be a token once unescaped), OWS around '=' and ';'.
  const Req quoted =
      good_request().add("Sec-WebSocket-Extensions", "x-ext ; a = \"10\" ; b=\"1\\0\"");
  ASSERT_EQ(quoted.parse(h), HandshakeError::kNone);
  ASSERT_EQ(h.num_extensions, 1u);
  EXPECT_EQ(param_str(h, h.extensions[0]), "x-ext;a=10;b=1\\0(escaped)");
  // No header, or an empty one: no offers.
  const Req empty = good_request().add("Sec-WebSocket-Extensions", "");
  ASSERT_EQ(empty.parse(h), HandshakeError::kNone);
  EXPECT_EQ(h.num_extensions, 0u);
  for (const char* bad :
       {"permessage-deflate;", "; a", "a;;b", "a b", "a; b=", "a; b=\"\"", "a; b=\"1 0\"",
        "a; b=\"10", "a; b=\"1\\", "a; =1", "a; b=1 2", "a; b=\"1\"x", "\"a\""}) {
    EXPECT_EQ(good_request().add("Sec-WebSocket-Extensions", bad).parse(),
              HandshakeError::kBadExtensions)
        << bad;
  }
  // kMaxExtensionOffers offers and one more; kMaxExtensionParams params and one more.
  std::string offers, params = "p";
  for (size_t k = 0; k < kMaxExtensionOffers; ++k) offers += k ? ", e" : "e";
  for (size_t k = 0; k < kMaxExtensionParams; ++k) params += "; x" + std::to_string(k);
  const Req max_offers = good_request().add("Sec-WebSocket-Extensions", offers);
  ASSERT_EQ(max_offers.parse(h), HandshakeError::kNone);
  EXPECT_EQ(h.num_extensions, kMaxExtensionOffers);
  EXPECT_EQ(good_request().add("Sec-WebSocket-Extensions", offers + ", e").parse(),
            HandshakeError::kTooManyExtensions);
  const Req max_params = good_request().add("Sec-WebSocket-Extensions", params);
  ASSERT_EQ(max_params.parse(h), HandshakeError::kNone);
  EXPECT_EQ(h.num_params, kMaxExtensionParams);
  EXPECT_EQ(good_request().add("Sec-WebSocket-Extensions", params + "; y").parse(),
            HandshakeError::kTooManyExtensions);
}

TEST(WsHandshake, ErrorTables) {
  for (int e = 0; e <= int(HandshakeError::kTooManyExtensions); ++e) {
    const auto err = static_cast<HandshakeError>(e);
    EXPECT_NE(std::string(error_reason(err)), "unknown error") << e;
    EXPECT_EQ(error_status(err), err == HandshakeError::kBadVersion ? 426 : 400);
  }
  for (int e = 0; e <= int(FrameError::kInvalidUtf8); ++e) {
    const auto err = static_cast<FrameError>(e);
    EXPECT_NE(std::string(error_reason(err)), "unknown error") << e;
    EXPECT_LE(std::strlen(error_reason(err)), 123u);  // fits a close frame
  }
}

}  // namespace
