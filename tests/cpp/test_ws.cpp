// WebSocket protocol pieces (src/core/ws): the UTF-8 validator, the frame parser and writer, and
// the opening handshake. Every valid input is replayed whole, at every two-way split, byte by
// byte and at random splits, and must give the same outcome each time; every rejection names its
// error, its close code and the byte it is reported at. Buffers end exactly at their allocation.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/ws/utf8.hpp"
#include "http1_support.hpp"

using namespace fulmen::ws;
using fulmen::test::ExactBuffer;

namespace {

// ---- UTF-8 ----------------------------------------------------------------------------------------

using U8 = Utf8Validator::Status;

struct Utf8Outcome {
  U8 status = U8::kValid;
  size_t bad = 0;  // absolute offset of the refused byte, when kInvalid
  bool operator==(const Utf8Outcome&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Utf8Outcome& o) {
  const char* s = o.status == U8::kValid ? "valid" : o.status == U8::kIncomplete ? "incomplete" : "invalid";
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

Utf8Outcome utf8_whole(const std::string& s) { return utf8_pieces(s, {}); }

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
    if ((c & 0xE0) == 0xC0) len = 2, bits = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, bits = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, bits = c & 0x07;
    else return {U8::kInvalid, i};
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
      "a\xe2\x82\xac" "bcdefghij\xf0\x9f\x98\x80xyz",  // mixed: euro sign, emoji
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
      {"\x80", 0},                          // lone continuation byte
      {"abc\xbf", 3},
      {"\xc0\x80", 0},                      // C0/C1 only ever start overlongs
      {"\xc1\xbf", 0},
      {"\xe0\x80\x80", 1},                  // overlong 3-byte: fails at the second byte
      {"\xe0\x9f\xbf", 1},
      {"\xf0\x80\x80\x80", 1},              // overlong 4-byte
      {"\xf0\x8f\xbf\xbf", 1},
      {"\xed\xa0\x80", 1},                  // U+D800: every completion of ED A0 is a surrogate
      {"\xed\xbf\xbf", 1},                  // U+DFFF
      {"\xf4\x90\x80\x80", 1},              // U+110000
      {"\xf5\x80\x80\x80", 0},              // F5..FF never start anything
      {"\xfe", 0},
      {"\xff", 0},
      {"\xc2\x41", 1},                      // lead byte followed by ASCII
      {"\xe2\x82\x41", 2},
      {"\xf0\x9f\x98\x41", 3},
      {"\xe2\x82\xac\xac", 3},              // one continuation byte too many
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
  const uint8_t edges[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2,
                           0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
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

}  // namespace
