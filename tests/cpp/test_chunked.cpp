// Chunked-body decoder tests. The cases are data (```chunked blocks in tests/vectors/http1/*.md);
// each is decoded whole, split in two at every point, and one byte at a time, the way the engine
// would: unconsumed bytes are kept and handed back with the next arrival, always in a buffer that
// ends exactly at the end of its allocation.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "http1_support.hpp"

using namespace fulmen;
using namespace fulmen::http1;
using fulmen::test::ExactBuffer;
using fulmen::test::Vector;

namespace {

struct Decoded {
  std::string body;
  size_t consumed = 0;
  ParseError err = ParseError::kNone;
  bool done = false;
  int calls = 0;
  bool operator==(const Decoded& o) const {
    return body == o.body && consumed == o.consumed && err == o.err && done == o.done;
  }
};

std::ostream& operator<<(std::ostream& os, const Decoded& d) {
  return os << "{body=" << ::testing::PrintToString(d.body) << " consumed=" << d.consumed
            << " err=" << test::error_name(d.err) << " done=" << d.done << "}";
}

// Arrivals end at each offset in `cuts` (the last must be in.size()).
Decoded decode(const std::string& in, const std::vector<size_t>& cuts, const Limits& lim) {
  ChunkedDecoder dec(lim);
  Decoded d;
  size_t pos = 0;
  for (size_t arrived : cuts) {
    while (pos < arrived && !d.done && d.err == ParseError::kNone) {
      ExactBuffer b(in.data() + pos, arrived - pos);
      ChunkedDecoder::Result r = dec.feed(b.p, b.n);
      ++d.calls;
      EXPECT_LE(r.consumed, b.n);
      if (!r.data.empty()) {
        EXPECT_GE(r.data.data(), b.p);
        EXPECT_LE(r.data.data() + r.data.size(), b.p + r.consumed);
        d.body.append(r.data);
      }
      pos += r.consumed;
      d.err = r.error;
      d.done = r.done;
      if (r.consumed == 0) break;
    }
    if (d.done || d.err != ParseError::kNone) break;
  }
  d.consumed = pos;
  EXPECT_EQ(dec.total(), d.body.size());
  return d;
}

Decoded expected(const Vector& v) {
  Decoded d;
  const std::string* outcome = v.get("outcome");
  if (!outcome) throw std::runtime_error("vector has no outcome");
  if (*outcome == "ok") {
    d.done = true;
  } else if (*outcome != "incomplete") {
    for (int i = 0; i <= static_cast<int>(ParseError::kHeadTooLarge); ++i)
      if (*outcome == test::error_name(static_cast<ParseError>(i))) d.err = static_cast<ParseError>(i);
    if (d.err == ParseError::kNone) throw std::runtime_error("unknown error name " + *outcome);
  }
  if (const std::string* b = v.get("body")) d.body = test::unescape(*b);
  const std::string* c = v.get("consumed");
  d.consumed = c ? std::stoul(*c) : v.input.size();
  return d;
}

class ChunkedVector : public ::testing::TestWithParam<Vector> {
 protected:
  void SetUp() override {
    test::apply_limits(GetParam(), lim_, max_head_);
    want_ = expected(GetParam());
  }
  Limits lim_;
  size_t max_head_ = 0;
  Decoded want_;
};

TEST_P(ChunkedVector, Whole) {
  const Vector& v = GetParam();
  Decoded d = decode(v.input, {v.input.size()}, lim_);
  if (want_.err != ParseError::kNone) {
    EXPECT_EQ(d.err, want_.err) << d;
    if (const std::string* st = v.get("status")) {
      EXPECT_EQ(std::to_string(error_status(d.err)), *st);
    }
    if (v.get("consumed")) {
      EXPECT_EQ(d.consumed, want_.consumed);
    }
    if (v.get("body")) {
      EXPECT_EQ(d.body, want_.body);
    }
  } else {
    EXPECT_EQ(d, want_);
  }
}

TEST_P(ChunkedVector, EverySplit) {
  const Vector& v = GetParam();
  Decoded whole = decode(v.input, {v.input.size()}, lim_);
  for (size_t k = 0; k <= v.input.size(); ++k) {
    Decoded d = decode(v.input, {k, v.input.size()}, lim_);
    EXPECT_EQ(d, whole) << "split at " << k;
  }
}

TEST_P(ChunkedVector, ByteByByte) {
  const Vector& v = GetParam();
  Decoded whole = decode(v.input, {v.input.size()}, lim_);
  std::vector<size_t> cuts;
  for (size_t k = 1; k <= v.input.size(); ++k) cuts.push_back(k);
  if (cuts.empty()) cuts.push_back(0);
  EXPECT_EQ(decode(v.input, cuts, lim_), whole);
}

std::vector<Vector> chunked_vectors() { return test::load_vectors(FULMEN_VECTORS_DIR "/http1", "chunked"); }

INSTANTIATE_TEST_SUITE_P(Http1, ChunkedVector, ::testing::ValuesIn(chunked_vectors()),
                         [](const ::testing::TestParamInfo<Vector>& i) { return test::test_name(i.param, i.index); });

TEST(Chunked, VectorsWereFound) { EXPECT_GE(chunked_vectors().size(), 25u); }

// A data span is handed out as soon as a single data byte is there, without waiting for the
// rest of the chunk: the decoder never holds bytes back.
TEST(Chunked, DataIsReturnedEagerly) {
  Limits lim;
  ChunkedDecoder dec(lim);
  auto r = dec.feed("a\r\n", 3);
  EXPECT_EQ(r.consumed, 3u);
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(dec.state(), ChunkedDecoder::State::kData);
  r = dec.feed("x", 1);
  EXPECT_EQ(r.consumed, 1u);
  EXPECT_EQ(r.data, "x");
  r = dec.feed("yyyyyyyyy\r\n0\r\n\r\nGET", 20);
  EXPECT_EQ(r.data, "yyyyyyyyy");
  EXPECT_EQ(r.consumed, 9u);
  r = dec.feed("\r\n0\r\n\r\nGET", 10);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.consumed, 7u);  // stops right before the pipelined request
  EXPECT_EQ(dec.total(), 10u);
  r = dec.feed("GET", 3);  // after done: nothing more is taken
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.consumed, 0u);
}

TEST(Chunked, ErrorIsSticky) {
  Limits lim;
  ChunkedDecoder dec(lim);
  auto r = dec.feed("x\r\n", 3);
  EXPECT_EQ(r.error, ParseError::kBadChunkSize);
  r = dec.feed("5\r\n", 3);
  EXPECT_EQ(r.error, ParseError::kBadChunkSize);
  EXPECT_EQ(r.consumed, 0u);
  dec.reset();
  r = dec.feed("0\r\n\r\n", 5);
  EXPECT_TRUE(r.done);
}

TEST(Chunked, BodyLimitCountsAllChunks) {
  Limits lim;
  lim.max_body = 10;
  ChunkedDecoder dec(lim);
  std::string in = "5\r\nhello\r\n5\r\nworld\r\n1\r\n!\r\n0\r\n\r\n";
  Decoded d = decode(in, {in.size()}, lim);
  EXPECT_EQ(d.err, ParseError::kBodyTooLarge);
  EXPECT_EQ(d.body, "helloworld");
  EXPECT_EQ(error_status(d.err), 413);
}

TEST(Chunked, EmptyFeed) {
  Limits lim;
  ChunkedDecoder dec(lim);
  auto r = dec.feed(nullptr, 0);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_FALSE(r.done);
  EXPECT_EQ(r.error, ParseError::kNone);
}

}  // namespace
