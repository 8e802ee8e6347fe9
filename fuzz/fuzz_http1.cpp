// libFuzzer target for the HTTP/1 head parser and chunked decoder, fed the way the engine feeds
// them: a growing read buffer re-parsed with the scan_from hint, then the body handed to a
// ChunkedDecoder in arbitrary pieces, then the next pipelined request.
//
// Input layout: byte 0 seeds the split points, byte 1 picks limits, the rest is the stream.
// Every buffer is malloc'd at exactly its length and freed after each call, so ASan reports
// both over-reads past the end and views that outlive their buffer. Every view is read.
//
// Oracles (abort on violation): an incremental parse must end exactly like a one-shot parse of
// the same bytes; a chunked body fed in pieces must decode exactly like one fed whole; views
// stay inside the buffer; consumed never exceeds what was given.
//
// The regression test (tests/cpp/test_fuzz_regressions.cpp) compiles this file and calls
// LLVMFuzzerTestOneInput on every file in fuzz/regressions/http1/.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/http1/parser.hpp"
#include "fuzz_support.hpp"

using namespace fulmen::http1;

using namespace fulmen::fuzz;

namespace {

// A view as (offset, length) in its buffer so results from different buffers can be compared;
// offset -1 means "not in the buffer" (only the static "/" the parser uses for absolute-form).
struct Pos {
  long off = -2;
  size_t len = 0;
  bool operator==(const Pos&) const = default;
};

Pos pos_of(std::string_view v, const char* base, size_t n) {
  if (v.empty()) return Pos{0, 0};
  if (v.data() >= base && v.data() + v.size() <= base + n) return Pos{v.data() - base, v.size()};
  FUZZ_CHECK(v == "/");  // the only view allowed to point elsewhere
  return Pos{-1, v.size()};
}

constexpr size_t kMaxHeaders = 128;

struct Snap {
  ptrdiff_t n = 0;
  ParseError err = ParseError::kNone;
  Pos method, target, scheme, authority, path, query, host;
  Method method_id = Method::kOther;
  uint8_t minor = 0;
  size_t num_headers = 0;
  Pos names[kMaxHeaders], values[kMaxHeaders];
  BodyKind body = BodyKind::kNone;
  uint64_t content_length = 0;
  bool keep_alive = false, expect_continue = false, upgrade = false;

  bool operator==(const Snap& o) const {
    if (n != o.n || err != o.err) return false;
    if (n < 0) return true;
    if (!(method == o.method && target == o.target && scheme == o.scheme && authority == o.authority &&
          path == o.path && query == o.query && host == o.host && method_id == o.method_id && minor == o.minor &&
          num_headers == o.num_headers && body == o.body && content_length == o.content_length &&
          keep_alive == o.keep_alive && expect_continue == o.expect_continue && upgrade == o.upgrade))
      return false;
    for (size_t i = 0; i < num_headers; ++i)
      if (!(names[i] == o.names[i] && values[i] == o.values[i])) return false;
    return true;
  }
};

void parse_into(const char* src, size_t n, const Limits& lim, size_t max_head, size_t* scan, Snap& s) {
  ExactBuf b(src, n);
  Header hs[kMaxHeaders];
  Request r;
  r.headers = hs;
  r.headers_capacity = kMaxHeaders;
  ParseError err = ParseError::kNone;
  s.n = parse_request_head(b.p, n, lim, r, &err, scan, max_head);
  s.err = err;
  FUZZ_CHECK(s.n == kIncomplete || s.n == kError || (s.n > 0 && static_cast<size_t>(s.n) <= n));
  FUZZ_CHECK((s.n == kError) == (err != ParseError::kNone));
  FUZZ_CHECK(*scan <= n);
  FUZZ_CHECK(error_reason(err) != nullptr);
  FUZZ_CHECK(error_status(err) >= 400);
  if (s.n <= 0) return;
  FUZZ_CHECK(r.num_headers <= lim.max_fields && r.num_headers <= kMaxHeaders);
  FUZZ_CHECK(!r.method.empty() && !r.target.empty());
  for (std::string_view v : {r.method, r.target, r.scheme, r.authority, r.path, r.query, r.host}) touch(v);
  s.method = pos_of(r.method, b.p, n);
  s.target = pos_of(r.target, b.p, n);
  s.scheme = pos_of(r.scheme, b.p, n);
  s.authority = pos_of(r.authority, b.p, n);
  s.path = pos_of(r.path, b.p, n);
  s.query = pos_of(r.query, b.p, n);
  s.host = pos_of(r.host, b.p, n);
  s.method_id = r.method_id;
  s.minor = r.version_minor;
  s.num_headers = r.num_headers;
  for (size_t i = 0; i < r.num_headers; ++i) {
    FUZZ_CHECK(!r.headers[i].name.empty());
    touch(r.headers[i].name);
    touch(r.headers[i].value);
    s.names[i] = pos_of(r.headers[i].name, b.p, n);
    s.values[i] = pos_of(r.headers[i].value, b.p, n);
  }
  s.body = r.body;
  s.content_length = r.content_length;
  s.keep_alive = r.keep_alive;
  s.expect_continue = r.expect_continue;
  s.upgrade = r.upgrade;
  FUZZ_CHECK(lim.max_body == 0 || r.body != BodyKind::kLength || r.content_length <= lim.max_body);
}

struct BodyOut {
  std::string data;
  size_t consumed = 0;
  ParseError err = ParseError::kNone;
  bool done = false;
  bool operator==(const BodyOut&) const = default;
};

// Feeds in[0..n) to a decoder; arrivals end at the offsets `rng` picks (0 = everything at once).
BodyOut decode(const char* in, size_t n, const Limits& lim, Rng* rng) {
  ChunkedDecoder dec(lim);
  BodyOut out;
  size_t pos = 0;      // first unconsumed byte
  size_t arrived = 0;  // bytes the "socket" has delivered
  while (arrived < n && !out.done && out.err == ParseError::kNone) {
    arrived = rng ? arrived + 1 + rng->next() % 32 : n;
    if (arrived > n) arrived = n;
    while (pos < arrived) {
      ExactBuf b(in + pos, arrived - pos);
      ChunkedDecoder::Result r = dec.feed(b.p, arrived - pos);
      FUZZ_CHECK(r.consumed <= arrived - pos);
      if (!r.data.empty()) {
        FUZZ_CHECK(r.data.data() >= b.p && r.data.data() + r.data.size() <= b.p + r.consumed);
        touch(r.data);
        out.data.append(r.data);
      }
      pos += r.consumed;
      if (r.error != ParseError::kNone) {
        FUZZ_CHECK(dec.state() == ChunkedDecoder::State::kError);
        out.err = r.error;
        break;
      }
      if (r.done) {
        FUZZ_CHECK(dec.state() == ChunkedDecoder::State::kDone);
        out.done = true;
        break;
      }
      if (r.consumed == 0) break;
    }
  }
  out.consumed = pos;
  FUZZ_CHECK(dec.total() == out.data.size());
  FUZZ_CHECK(lim.max_body == 0 || dec.total() <= lim.max_body);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  Rng rng{0x9e3779b9u ^ (static_cast<uint32_t>(data[0]) * 0x01000193u)};
  uint8_t flags = data[1];
  const char* in = reinterpret_cast<const char*>(data) + 2;
  size_t n = size - 2;

  Limits lim;
  size_t max_head = 65536;
  if (flags & 1) {  // tiny limits so the fuzzer reaches every N / N+1 boundary quickly
    lim.max_request_line = 16 + ((flags >> 1) & 15);
    lim.max_field_size = 16 + ((flags >> 5) & 7) * 3;
    lim.max_fields = 1 + ((flags >> 2) & 3);
    lim.max_body = 1 + (flags >> 4);
    max_head = 40 + (flags >> 1) * 2;
  }

  size_t off = 0;
  for (int req = 0; req < 4 && off < n; ++req) {
    const char* s = in + off;
    size_t avail = n - off;

    // The reference: everything at once.
    static Snap one, inc;
    one = Snap{};
    size_t scan = 0;
    parse_into(s, avail, lim, max_head, &scan, one);

    // The engine's way: the read buffer grows, the hint carries over.
    scan = 0;
    size_t k = 0;
    for (;;) {
      k += 1 + rng.next() % ((flags & 0x80) ? 4 : 64);
      if (k > avail) k = avail;
      inc = Snap{};
      parse_into(s, k, lim, max_head, &scan, inc);
      if (inc.n != kIncomplete || k == avail) break;
    }
    FUZZ_CHECK(inc == one);
    if (one.n <= 0) return 0;

    off += static_cast<size_t>(one.n);
    if (one.body == BodyKind::kLength) {
      if (one.content_length > n - off) return 0;
      off += static_cast<size_t>(one.content_length);
    } else if (one.body == BodyKind::kChunked) {
      BodyOut whole = decode(in + off, n - off, lim, nullptr);
      BodyOut pieces = decode(in + off, n - off, lim, &rng);
      FUZZ_CHECK(whole == pieces);
      if (!whole.done) return 0;
      off += whole.consumed;
    }
  }
  return 0;
}
