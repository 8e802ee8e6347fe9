// Strict HTTP/1.1 request-head parser and chunked-body decoder (RFC 9112, RFC 9110).
//
// Shape of parse_request_head():
//   * A "full parse" walks the head line by line from byte 0, validating and filling `Request` in
//     one pass. It runs once per request in the common case (the whole head arrived in one read).
//   * When the head trickles in, a "fast scan" resumes at *scan_from (the start of the last
//     incomplete line) and only looks for line ends, bare LFs and limits. Only when it sees
//     something decisive (the blank line, a bare LF, a limit crossed) does it hand over to the full
//     parse, so a slow client costs O(bytes of the current line) per read, not O(head).
//   * Both paths detect limits with the same rule ("at which byte did the limit get crossed"), so
//     every prefix of an input yields either kIncomplete or exactly the outcome of the whole input.
//     The tests replay every vector at every split point to hold us to that.
#include "core/http1/parser.hpp"

#include <cstring>

namespace fulmen::http1 {

namespace {

// RFC 9110 says a server SHOULD ignore at least one empty line before the request line (some
// clients send a stray CRLF after a POST body). We skip up to this many; more is an error, so a
// peer cannot keep a connection busy with an endless stream of CRLFs.
constexpr int kMaxLeadingEmptyLines = 4;

// Byte classes, one 256-entry table so each check is a load and a test.
enum : uint8_t {
  kTchar = 1,      // token characters (RFC 9110 5.6.2)
  kFieldChar = 2,  // bytes allowed inside a field value: VCHAR, SP, HTAB, obs-text
  kTargetChar = 4, // bytes allowed in a request-target: visible ASCII 0x21-0x7E
  kHostChar = 8,   // bytes allowed in a Host value / authority: unreserved, pct, sub-delims, ":[]"
  kQdText = 16,    // quoted-string body (RFC 9110 5.6.4) minus '"' and '\'
};

constexpr bool is_tchar_c(unsigned c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

constexpr bool is_host_c(unsigned c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  switch (c) {
    case '-': case '.': case '_': case '~': case '%': case '!': case '$': case '&': case '\'':
    case '(': case ')': case '*': case '+': case ',': case ';': case '=': case ':': case '[': case ']':
      return true;
    default:
      return false;
  }
}

struct ClassTable {
  uint8_t v[256];
  constexpr ClassTable() : v() {
    for (unsigned c = 0; c < 256; ++c) {
      uint8_t f = 0;
      if (is_tchar_c(c)) f |= kTchar;
      if (c == '\t' || (c >= 0x20 && c != 0x7f)) f |= kFieldChar;
      if (c >= 0x21 && c <= 0x7e) f |= kTargetChar;
      if (is_host_c(c)) f |= kHostChar;
      if (c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e) ||
          c >= 0x80)
        f |= kQdText;
      v[c] = f;
    }
  }
};
constexpr ClassTable kClass;

inline bool is_tchar(char c) { return kClass.v[static_cast<uint8_t>(c)] & kTchar; }
inline bool has_class(char c, uint8_t f) { return kClass.v[static_cast<uint8_t>(c)] & f; }
inline bool is_ows(char c) { return c == ' ' || c == '\t'; }
inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : c; }

// `lit` must already be lowercase; lengths are compared first by the callers.
inline bool ieq(std::string_view s, std::string_view lit) {
  if (s.size() != lit.size()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (lower(s[i]) != lit[i]) return false;
  return true;
}

// ---- lines ------------------------------------------------------------------------------------

enum class LineStatus : uint8_t { kLine, kIncomplete, kError };

// Locates the line that starts at `s`. Both the fast scan and the full parse use this, so a limit
// is reported for the same input however it was split. A limit "fires" at the first byte that
// makes it certain: for the line limit that is byte s+limit, unless that byte is a CR, which may
// still be the line's own CR (then it is the byte after). For max_head it is byte index max_head.
// When both fire, the one that fired at the earlier byte wins (ties: the head limit).
inline LineStatus find_line(const char* buf, size_t len, size_t s, size_t limit, ParseError limit_err,
                            size_t max_head, size_t* lf_out, ParseError* err) {
  const void* hit = std::memchr(buf + s, '\n', len - s);
  size_t stop;  // bytes known so far for this line: up to the LF or the end of input
  bool line_over;
  if (hit) {
    size_t lf = static_cast<const char*>(hit) - buf;
    size_t content_end = (lf > s && buf[lf - 1] == '\r') ? lf - 1 : lf;
    line_over = content_end - s > limit;
    stop = lf + 1;
    *lf_out = lf;
  } else {
    stop = len;
    line_over = false;
    if (len - s > limit) {
      size_t t = s + limit + (buf[s + limit] == '\r' ? 1 : 0);
      line_over = t < len;
    }
  }
  bool head_over = stop > max_head;
  if (line_over || head_over) {
    size_t t_line = line_over ? s + limit + (buf[s + limit] == '\r' ? 1 : 0) : SIZE_MAX;
    size_t t_head = head_over ? max_head : SIZE_MAX;
    *err = t_head <= t_line ? ParseError::kHeadTooLarge : limit_err;
    return LineStatus::kError;
  }
  if (!hit) return LineStatus::kIncomplete;
  if (*lf_out == s || buf[*lf_out - 1] != '\r') {
    *err = ParseError::kBareLF;
    return LineStatus::kError;
  }
  return LineStatus::kLine;
}

// ---- request line -------------------------------------------------------------------------------

Method method_id(std::string_view m) {
  switch (m.size()) {
    case 3:
      if (m == "GET") return Method::kGet;
      if (m == "PUT") return Method::kPut;
      break;
    case 4:
      if (m == "POST") return Method::kPost;
      if (m == "HEAD") return Method::kHead;
      break;
    case 5:
      if (m == "PATCH") return Method::kPatch;
      if (m == "TRACE") return Method::kTrace;
      break;
    case 6:
      if (m == "DELETE") return Method::kDelete;
      break;
    case 7:
      if (m == "OPTIONS") return Method::kOptions;
      if (m == "CONNECT") return Method::kConnect;
      break;
    default:
      break;
  }
  return Method::kOther;
}

// host [ ":" port ]; `need_port` for CONNECT's authority-form. Empty host is refused.
bool valid_authority(std::string_view a, bool need_port) {
  if (a.empty()) return false;
  for (char c : a)
    if (!has_class(c, kHostChar)) return false;
  if (!need_port) return true;
  size_t colon = a.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == a.size()) return false;
  for (size_t i = colon + 1; i < a.size(); ++i)
    if (a[i] < '0' || a[i] > '9') return false;
  return true;
}

void split_path_query(std::string_view pq, Request& out) {
  size_t q = pq.find('?');
  if (q == std::string_view::npos) {
    out.path = pq;
    out.query = {};
  } else {
    out.path = pq.substr(0, q);
    out.query = pq.substr(q + 1);
  }
}

ParseError parse_target(std::string_view t, Request& out) {
  out.scheme = {};
  out.authority = {};
  out.query = {};
  // A fragment is never part of a request-target (RFC 9112 3.2); a client that sends one is broken.
  if (t.find('#') != std::string_view::npos) return ParseError::kBadTarget;
  if (out.method_id == Method::kConnect) {
    // authority-form only (RFC 9112 3.2.3): host ":" port, nothing else.
    if (!valid_authority(t, true)) return ParseError::kBadTarget;
    out.authority = t;
    out.path = {};
    return ParseError::kNone;
  }
  if (t[0] == '/') {
    split_path_query(t, out);
    return ParseError::kNone;
  }
  if (t.size() == 1 && t[0] == '*') {
    if (out.method_id != Method::kOptions) return ParseError::kBadTarget;
    out.path = t;
    return ParseError::kNone;
  }
  // absolute-form: scheme "://" authority [ path-abempty ] [ "?" query ]. Only http(s): a server
  // has nothing to do with other schemes, and userinfo is an error (RFC 9110 4.2.4).
  size_t colon = t.find("://");
  if (colon == std::string_view::npos) return ParseError::kBadTarget;
  std::string_view scheme = t.substr(0, colon);
  if (!ieq(scheme, "http") && !ieq(scheme, "https")) return ParseError::kBadTarget;
  std::string_view rest = t.substr(colon + 3);
  size_t end = rest.find_first_of("/?");
  std::string_view auth = rest.substr(0, end);
  if (!valid_authority(auth, false)) return ParseError::kBadTarget;
  out.scheme = scheme;
  out.authority = auth;
  if (end == std::string_view::npos) {
    out.path = "/";  // a static literal: outlives any buffer
    return ParseError::kNone;
  }
  split_path_query(rest.substr(end), out);
  if (out.path.empty()) out.path = "/";  // "http://h?q"
  return ParseError::kNone;
}

ParseError parse_request_line(const char* p, const char* end, Request& out) {
  const char* m = p;
  while (p < end && is_tchar(*p)) ++p;
  if (p == m) return ParseError::kBadMethod;
  if (p == end) return ParseError::kBadRequestLine;
  if (*p != ' ') return *p == '\r' ? ParseError::kBadRequestLine : ParseError::kBadMethod;
  out.method = std::string_view(m, p - m);
  out.method_id = method_id(out.method);
  ++p;

  const char* t = p;
  while (p < end && has_class(*p, kTargetChar)) ++p;
  if (p == end) return ParseError::kBadRequestLine;  // no version
  if (*p != ' ') return *p == '\r' ? ParseError::kBadRequestLine : ParseError::kBadTarget;
  if (p == t) return ParseError::kBadRequestLine;     // two spaces in a row
  out.target = std::string_view(t, p - t);
  ++p;

  // The rest is the version and nothing else: a further SP means a wrong number of parts.
  const char* v = p;
  if (std::memchr(v, ' ', end - v) || std::memchr(v, '\r', end - v)) return ParseError::kBadRequestLine;
  if (end - v != 8 || std::memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
      v[7] < '0' || v[7] > '9')
    return ParseError::kBadVersion;
  if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) return ParseError::kUnsupportedVersion;
  out.version_minor = static_cast<uint8_t>(v[7] - '0');

  return parse_target(out.target, out);
}

// ---- field semantics ---------------------------------------------------------------------------

// What the known fields said, gathered while walking the lines and judged once the head is whole,
// so the verdict does not depend on field order.
struct Semantics {
  uint64_t content_length = 0;
  bool has_cl = false;
  bool bad_cl = false;
  bool has_te = false;
  bool te_bad = false;      // malformed element, chunked twice, or chunked not last
  bool te_unknown = false;  // a coding we do not implement
  bool te_chunked_last = false;
  bool conn_close = false;
  bool conn_keep_alive = false;
  bool conn_upgrade = false;
  bool has_upgrade = false;
  bool expect_continue = false;
  bool bad_host = false;
  unsigned hosts = 0;
};

// Calls f(element) for each element of a comma list, OWS trimmed; empty elements included.
template <class F>
void for_each_element(std::string_view v, F&& f) {
  size_t i = 0;
  for (;;) {
    size_t c = v.find(',', i);
    std::string_view e = v.substr(i, c == std::string_view::npos ? std::string_view::npos : c - i);
    while (!e.empty() && is_ows(e.front())) e.remove_prefix(1);
    while (!e.empty() && is_ows(e.back())) e.remove_suffix(1);
    f(e);
    if (c == std::string_view::npos) return;
    i = c + 1;
  }
}

void on_content_length(std::string_view v, Semantics& s) {
  bool first = !s.has_cl;  // no value seen yet to compare against
  s.has_cl = true;
  for_each_element(v, [&](std::string_view e) {
    if (e.empty()) {
      s.bad_cl = true;
      return;
    }
    uint64_t n = 0;
    for (char c : e) {
      if (c < '0' || c > '9') {
        s.bad_cl = true;
        return;
      }
      unsigned d = static_cast<unsigned>(c - '0');
      if (n > (UINT64_MAX - d) / 10) {
        s.bad_cl = true;
        return;
      }
      n = n * 10 + d;
    }
    if (!first && n != s.content_length) s.bad_cl = true;
    first = false;
    s.content_length = n;
  });
}

void on_transfer_encoding(std::string_view v, Semantics& s) {
  s.has_te = true;
  for_each_element(v, [&](std::string_view e) {
    bool token = !e.empty();
    for (char c : e) token = token && is_tchar(c);
    if (!token) {
      s.te_bad = true;  // empty element or parameters: nothing we accept looks like that
      return;
    }
    if (ieq(e, "chunked")) {
      if (s.te_chunked_last) s.te_bad = true;  // chunked twice
      s.te_chunked_last = true;
    } else {
      if (s.te_chunked_last) s.te_bad = true;  // a coding after chunked: framing is ambiguous
      s.te_unknown = true;
      s.te_chunked_last = false;
    }
  });
}

void on_connection(std::string_view v, Semantics& s) {
  for_each_element(v, [&](std::string_view e) {
    switch (e.size()) {
      case 5:
        s.conn_close |= ieq(e, "close");
        break;
      case 7:
        s.conn_upgrade |= ieq(e, "upgrade");
        break;
      case 10:
        s.conn_keep_alive |= ieq(e, "keep-alive");
        break;
      default:
        break;
    }
  });
}

void on_field(std::string_view name, std::string_view value, Request& out, Semantics& s) {
  switch (name.size()) {
    case 4:
      if (ieq(name, "host")) {
        ++s.hosts;
        out.host = value;
        // Empty is allowed (RFC 9110 7.2); anything that cannot be host[:port] is refused.
        for (char c : value) s.bad_host |= !has_class(c, kHostChar);
      }
      break;
    case 6:
      if (ieq(name, "expect")) s.expect_continue |= ieq(value, "100-continue");
      break;
    case 7:
      if (ieq(name, "upgrade")) s.has_upgrade = true;
      break;
    case 10:
      if (ieq(name, "connection")) on_connection(value, s);
      break;
    case 14:
      if (ieq(name, "content-length")) on_content_length(value, s);
      break;
    case 17:
      if (ieq(name, "transfer-encoding")) on_transfer_encoding(value, s);
      break;
    default:
      break;
  }
}

ParseError judge(const Semantics& s, const Limits& limits, Request& out) {
  bool v11 = out.version_minor == 1;
  if (s.hosts > 1) return ParseError::kMultipleHost;
  if (v11 && s.hosts == 0) return ParseError::kMissingHost;
  if (s.bad_host) return ParseError::kBadHeaderValue;
  if (s.has_te) {
    if (s.has_cl) return ParseError::kContentLengthAndTransferEncoding;
    if (!v11) return ParseError::kBadTransferEncoding;
    if (s.te_bad) return ParseError::kBadTransferEncoding;
    if (s.te_unknown) return ParseError::kUnknownTransferEncoding;
    if (!s.te_chunked_last) return ParseError::kBadTransferEncoding;  // no element at all
    out.body = BodyKind::kChunked;
  } else if (s.has_cl) {
    if (s.bad_cl) return ParseError::kBadContentLength;
    if (limits.max_body != 0 && s.content_length > limits.max_body) return ParseError::kBodyTooLarge;
    out.body = BodyKind::kLength;
    out.content_length = s.content_length;
  }
  out.keep_alive = v11 ? !s.conn_close : (s.conn_keep_alive && !s.conn_close);
  out.expect_continue = v11 && s.expect_continue;
  out.upgrade = s.conn_upgrade && s.has_upgrade;
  return ParseError::kNone;
}

// Validates one field line [p, end) (no CRLF) and returns name/value views.
ParseError parse_field_line(const char* p, const char* end, std::string_view* name, std::string_view* value) {
  if (is_ows(*p)) return ParseError::kObsFold;
  const char* n = p;
  while (p < end && is_tchar(*p)) ++p;
  if (p == end || *p != ':' || p == n) return ParseError::kBadHeaderName;
  *name = std::string_view(n, p - n);
  ++p;
  while (p < end && is_ows(*p)) ++p;
  const char* v = p;
  // Values are most of a head's bytes: check 8 at a time (any byte < 0x20 or == 0x7f?) and fall
  // back to the table only for a block that has one (usually an HTAB, else an error).
  constexpr uint64_t kOnes = 0x0101010101010101ull, kHighs = 0x8080808080808080ull;
  while (end - p >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    uint64_t ctl = (w - kOnes * 0x20) & ~w & kHighs;
    uint64_t x = w ^ (kOnes * 0x7f);
    uint64_t del = (x - kOnes) & ~x & kHighs;
    if ((ctl | del) != 0) {
      for (int i = 0; i < 8; ++i)
        if (!has_class(p[i], kFieldChar)) return ParseError::kBadHeaderValue;
    }
    p += 8;
  }
  for (; p < end; ++p)
    if (!has_class(*p, kFieldChar)) return ParseError::kBadHeaderValue;
  while (p > v && is_ows(p[-1])) --p;
  *value = std::string_view(v, p - v);
  return ParseError::kNone;
}

void reset_request(Request& out) {
  out.method = {};
  out.method_id = Method::kOther;
  out.target = {};
  out.scheme = {};
  out.authority = {};
  out.path = {};
  out.query = {};
  out.version_minor = 1;
  out.num_headers = 0;
  out.body = BodyKind::kNone;
  out.content_length = 0;
  out.keep_alive = true;
  out.expect_continue = false;
  out.upgrade = false;
  out.host = {};
}

// Offset of the request line: after up to kMaxLeadingEmptyLines CRLFs (a stray extra one is left
// for the full parse to refuse).
size_t request_line_start(const char* buf, size_t len) {
  size_t r = 0;
  for (int i = 0; i < kMaxLeadingEmptyLines && r + 1 < len && buf[r] == '\r' && buf[r + 1] == '\n'; ++i) r += 2;
  return r;
}

// The authoritative pass: from byte 0, every line in order. On kIncomplete, *tail is the start of
// the unfinished line so the next call can resume the fast scan there.
ptrdiff_t full_parse(const char* buf, size_t len, const Limits& limits, Request& out, ParseError* error,
                     size_t* tail, size_t max_head) {
  reset_request(out);
  size_t s = 0;
  size_t lf = 0;
  ParseError e = ParseError::kNone;
  auto fail = [&](ParseError why) {
    *error = why;
    return kError;
  };

  for (int empties = 0;; ++empties) {
    LineStatus st = find_line(buf, len, s, limits.max_request_line, ParseError::kRequestLineTooLong, max_head,
                              &lf, &e);
    if (st == LineStatus::kError) return fail(e);
    if (st == LineStatus::kIncomplete) {
      *tail = s;
      return kIncomplete;
    }
    if (lf - 1 != s) {
      e = parse_request_line(buf + s, buf + lf - 1, out);
      if (e != ParseError::kNone) return fail(e);
      s = lf + 1;
      break;
    }
    if (empties == kMaxLeadingEmptyLines) return fail(ParseError::kBadRequestLine);
    s = lf + 1;
  }

  Semantics sem;
  bool too_many = false;
  for (;;) {
    LineStatus st = find_line(buf, len, s, limits.max_field_size, ParseError::kHeaderTooLarge, max_head, &lf, &e);
    if (st == LineStatus::kError) return fail(e);
    if (st == LineStatus::kIncomplete) {
      *tail = s;
      return kIncomplete;
    }
    if (lf - 1 == s) break;  // the empty line: end of head
    std::string_view name, value;
    e = parse_field_line(buf + s, buf + lf - 1, &name, &value);
    if (e != ParseError::kNone) return fail(e);
    // Too many fields is judged when the head ends, like the other whole-head checks: the fast
    // scan cannot count lines it did not see, and the verdict must not depend on how the bytes
    // were split. max_head still bounds the work, and nothing is stored past the caller's array.
    if (out.num_headers >= limits.max_fields || out.num_headers >= out.headers_capacity) {
      too_many = true;
    } else {
      out.headers[out.num_headers++] = Header{name, value};
      on_field(name, value, out, sem);
    }
    s = lf + 1;
  }
  if (too_many) return fail(ParseError::kTooManyHeaders);
  e = judge(sem, limits, out);
  if (e != ParseError::kNone) return fail(e);
  return static_cast<ptrdiff_t>(lf + 1);
}

}  // namespace

ptrdiff_t parse_request_head(const char* buf, size_t len, const Limits& limits, Request& out, ParseError* error,
                             size_t* scan_from, size_t max_head) noexcept {
  ParseError scratch_err;
  if (!error) error = &scratch_err;
  *error = ParseError::kNone;
  size_t scratch_scan = 0;
  if (!scan_from) scan_from = &scratch_scan;
  size_t s = *scan_from;
  if (s > len) s = 0;  // a stale hint from another buffer: start over rather than trust it

  if (s != 0) {
    // Fast scan: every line before `s` was already found complete and clean. Walk the new lines
    // only; anything decisive goes to the full parse, which reports exactly as for one read.
    size_t r = request_line_start(buf, len);
    for (;;) {
      bool is_rl = s <= r;
      size_t lf = 0;
      ParseError e = ParseError::kNone;
      LineStatus st = is_rl ? find_line(buf, len, s, limits.max_request_line, ParseError::kRequestLineTooLong,
                                        max_head, &lf, &e)
                            : find_line(buf, len, s, limits.max_field_size, ParseError::kHeaderTooLarge,
                                        max_head, &lf, &e);
      if (st == LineStatus::kIncomplete) {
        *scan_from = s;
        return kIncomplete;
      }
      if (st == LineStatus::kError || lf - 1 == s) break;  // an error, or the empty line
      // Each line is checked once, when it completes, so a bad line is refused as early as a
      // single read would refuse it (the full parse then reports it, in order).
      std::string_view name, value;
      ParseError bad = is_rl ? parse_request_line(buf + s, buf + lf - 1, out)
                             : parse_field_line(buf + s, buf + lf - 1, &name, &value);
      if (bad != ParseError::kNone) break;
      s = lf + 1;
    }
  }
  size_t tail = 0;
  ptrdiff_t n = full_parse(buf, len, limits, out, error, &tail, max_head);
  if (n == kIncomplete) *scan_from = tail;
  return n;
}

int error_status(ParseError e) noexcept {
  switch (e) {
    case ParseError::kBodyTooLarge:
      return 413;
    case ParseError::kRequestLineTooLong:
      return 414;
    case ParseError::kTooManyHeaders:
    case ParseError::kHeaderTooLarge:
    case ParseError::kTrailerTooLarge:
    case ParseError::kHeadTooLarge:
      return 431;
    case ParseError::kUnknownTransferEncoding:
      return 501;
    case ParseError::kUnsupportedVersion:
      return 505;
    default:
      return 400;
  }
}

const char* error_reason(ParseError e) noexcept {
  switch (e) {
    case ParseError::kNone: return "no error";
    case ParseError::kBadMethod: return "invalid method";
    case ParseError::kBadTarget: return "invalid request-target";
    case ParseError::kBadVersion: return "invalid HTTP version";
    case ParseError::kUnsupportedVersion: return "HTTP version not supported";
    case ParseError::kBadRequestLine: return "malformed request line";
    case ParseError::kRequestLineTooLong: return "request line too long";
    case ParseError::kBadHeaderName: return "invalid header name";
    case ParseError::kBadHeaderValue: return "invalid header value";
    case ParseError::kObsFold: return "obs-fold in header";
    case ParseError::kTooManyHeaders: return "too many header fields";
    case ParseError::kHeaderTooLarge: return "header field too large";
    case ParseError::kBareLF: return "bare LF line ending";
    case ParseError::kBadContentLength: return "invalid Content-Length";
    case ParseError::kContentLengthAndTransferEncoding: return "both Content-Length and Transfer-Encoding";
    case ParseError::kBadTransferEncoding: return "invalid Transfer-Encoding";
    case ParseError::kUnknownTransferEncoding: return "unsupported transfer coding";
    case ParseError::kMissingHost: return "missing Host header";
    case ParseError::kMultipleHost: return "multiple Host headers";
    case ParseError::kBodyTooLarge: return "request body too large";
    case ParseError::kBadChunkSize: return "invalid chunk size";
    case ParseError::kBadChunkExtension: return "invalid chunk extension";
    case ParseError::kBadChunkTerminator: return "chunk data not followed by CRLF";
    case ParseError::kBadTrailer: return "invalid trailer field";
    case ParseError::kTrailerTooLarge: return "trailer section too large";
    case ParseError::kHeadTooLarge: return "request head too large";
  }
  return "unknown error";
}

// ---- chunked ------------------------------------------------------------------------------------

void ChunkedDecoder::reset() noexcept {
  state_ = State::kSize;
  remaining_ = 0;
  total_ = 0;
  size_digits_ = 0;
  line_bytes_ = 0;
  trailer_fields_ = 0;
  last_chunk_ = false;
  trailer_phase_ = 0;
  ext_phase_ = 0;
  error_ = ParseError::kNone;
}

namespace {
inline int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  char l = static_cast<char>(c | 0x20);
  if (l >= 'a' && l <= 'f') return l - 'a' + 10;
  return -1;
}

// chunk-ext phases (RFC 9112 7.1.1): *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
// The grammar puts BWS only before ';' and around '=': a CR may follow a name, a token value or
// a closing quote, never whitespace.
enum : uint8_t {
  kExtBeforeSemi,   // BWS, then ';'
  kExtBeforeName,   // BWS after ';'
  kExtName,         // then '=', ';', BWS or CR
  kExtAfterName,    // BWS, then '=' or ';'
  kExtBeforeValue,  // BWS after '='
  kExtToken,        // then ';', BWS or CR
  kExtQuoted,
  kExtQuotedPair,
  kExtAfterQuoted,  // then ';', BWS or CR
};

// trailer-section phases
enum : uint8_t {
  kTrLineStart,
  kTrName,
  kTrValue,
  kTrLF,       // saw the CR that ends a field line
  kTrFinalLF,  // saw the CR of the empty line
};
}  // namespace

ChunkedDecoder::Result ChunkedDecoder::feed(const char* p, size_t n) noexcept {
  Result r;
  size_t i = 0;
  auto fail = [&](ParseError e) {
    state_ = State::kError;
    error_ = e;
    r.consumed = i;
    r.error = e;
    return r;
  };
  if (state_ == State::kDone) {
    r.done = true;
    return r;
  }
  if (state_ == State::kError) {
    r.error = error_;
    return r;
  }

  // The size line and trailer are capped at max_field_size: nothing is buffered, but an endless
  // extension would otherwise keep a worker parsing forever.
  const size_t line_cap = limits_->max_field_size;

  while (i < n) {
    char c = p[i];
    switch (state_) {
      case State::kSize: {
        int h = hexval(c);
        if (h >= 0) {
          if (++size_digits_ > 16) return fail(ParseError::kBadChunkSize);
          remaining_ = (remaining_ << 4) | static_cast<unsigned>(h);
          ++i;
          continue;
        }
        if (size_digits_ == 0) return fail(ParseError::kBadChunkSize);
        line_bytes_ = size_digits_;
        if (c == '\r') {
          state_ = State::kSizeLF;
        } else if (c == ';' || is_ows(c)) {
          state_ = State::kExt;
          ext_phase_ = c == ';' ? kExtBeforeName : kExtBeforeSemi;
          ++line_bytes_;
        } else if (c == '\n') {
          return fail(ParseError::kBareLF);
        } else {
          return fail(ParseError::kBadChunkSize);
        }
        ++i;
        continue;
      }
      case State::kExt: {
        if (c == '\r') {
          // Only after a complete element (or after BWS that followed one).
          if (ext_phase_ == kExtName || ext_phase_ == kExtToken || ext_phase_ == kExtAfterQuoted) {
            state_ = State::kSizeLF;
            ++i;
            continue;
          }
          if (ext_phase_ != kExtQuoted && ext_phase_ != kExtQuotedPair) return fail(ParseError::kBadChunkExtension);
        }
        if (c == '\n') return fail(ParseError::kBareLF);
        if (++line_bytes_ > line_cap) return fail(ParseError::kBadChunkExtension);
        bool ok = true;
        switch (ext_phase_) {
          case kExtBeforeSemi:
            if (c == ';') ext_phase_ = kExtBeforeName;
            else ok = is_ows(c);
            break;
          case kExtBeforeName:
            if (is_tchar(c)) ext_phase_ = kExtName;
            else ok = is_ows(c);
            break;
          case kExtName:
            if (is_tchar(c)) break;
            if (is_ows(c)) ext_phase_ = kExtAfterName;
            else if (c == '=') ext_phase_ = kExtBeforeValue;
            else if (c == ';') ext_phase_ = kExtBeforeName;
            else ok = false;
            break;
          case kExtAfterName:
            if (c == '=') ext_phase_ = kExtBeforeValue;
            else if (c == ';') ext_phase_ = kExtBeforeName;
            else ok = is_ows(c);
            break;
          case kExtBeforeValue:
            if (is_tchar(c)) ext_phase_ = kExtToken;
            else if (c == '"') ext_phase_ = kExtQuoted;
            else ok = is_ows(c);
            break;
          case kExtToken:
            if (is_tchar(c)) break;
            if (is_ows(c)) ext_phase_ = kExtBeforeSemi;
            else if (c == ';') ext_phase_ = kExtBeforeName;
            else ok = false;
            break;
          case kExtQuoted:
            if (c == '"') ext_phase_ = kExtAfterQuoted;
            else if (c == '\\') ext_phase_ = kExtQuotedPair;
            else ok = has_class(c, kQdText);
            break;
          case kExtQuotedPair:
            ok = c == '\t' || (static_cast<uint8_t>(c) >= 0x20 && c != 0x7f);
            ext_phase_ = kExtQuoted;
            break;
          case kExtAfterQuoted:
            if (is_ows(c)) ext_phase_ = kExtBeforeSemi;
            else if (c == ';') ext_phase_ = kExtBeforeName;
            else ok = false;
            break;
          default:
            ok = false;
        }
        if (!ok) return fail(ParseError::kBadChunkExtension);
        ++i;
        continue;
      }
      case State::kSizeLF: {
        if (c != '\n') return fail(ParseError::kBadChunkSize);  // bare CR
        ++i;
        size_digits_ = 0;
        line_bytes_ = 0;
        if (remaining_ == 0) {
          last_chunk_ = true;
          state_ = State::kTrailer;
          trailer_phase_ = kTrLineStart;
          continue;
        }
        if (remaining_ > UINT64_MAX - total_ ||
            (limits_->max_body != 0 && total_ + remaining_ > limits_->max_body))
          return fail(ParseError::kBodyTooLarge);
        state_ = State::kData;
        continue;
      }
      case State::kData: {
        size_t k = n - i;
        if (k > remaining_) k = static_cast<size_t>(remaining_);
        r.data = std::string_view(p + i, k);
        remaining_ -= k;
        total_ += k;
        i += k;
        if (remaining_ == 0) state_ = State::kDataCR;
        r.consumed = i;
        return r;  // one span per call, handed out as soon as we have it
      }
      case State::kDataCR:
        if (c != '\r') return fail(ParseError::kBadChunkTerminator);
        state_ = State::kDataLF;
        ++i;
        continue;
      case State::kDataLF:
        if (c != '\n') return fail(ParseError::kBadChunkTerminator);
        state_ = State::kSize;
        ++i;
        continue;
      case State::kTrailer: {
        switch (trailer_phase_) {
          case kTrLineStart:
            if (c == '\r') {
              trailer_phase_ = kTrFinalLF;
              break;
            }
            if (c == '\n') return fail(ParseError::kBareLF);
            if (!is_tchar(c)) return fail(ParseError::kBadTrailer);  // includes obs-fold
            if (++trailer_fields_ > limits_->max_fields) return fail(ParseError::kTrailerTooLarge);
            line_bytes_ = 1;
            trailer_phase_ = kTrName;
            break;
          case kTrName:
            if (++line_bytes_ > line_cap) return fail(ParseError::kTrailerTooLarge);
            if (c == ':') trailer_phase_ = kTrValue;
            else if (!is_tchar(c)) return fail(ParseError::kBadTrailer);
            break;
          case kTrValue:
            if (c == '\r') {
              trailer_phase_ = kTrLF;
              break;
            }
            if (c == '\n') return fail(ParseError::kBareLF);
            if (++line_bytes_ > line_cap) return fail(ParseError::kTrailerTooLarge);
            if (!has_class(c, kFieldChar)) return fail(ParseError::kBadTrailer);
            break;
          case kTrLF:
            if (c != '\n') return fail(ParseError::kBadTrailer);
            trailer_phase_ = kTrLineStart;
            break;
          case kTrFinalLF:
            if (c != '\n') return fail(ParseError::kBadTrailer);
            ++i;
            state_ = State::kDone;
            r.consumed = i;
            r.done = true;
            return r;
          default:
            return fail(ParseError::kBadTrailer);
        }
        ++i;
        continue;
      }
      case State::kDone:
      case State::kError:
        break;
    }
    break;
  }
  r.consumed = i;
  return r;
}

}  // namespace fulmen::http1
