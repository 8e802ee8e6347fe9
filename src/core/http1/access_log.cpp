// Access-log format compiler and line renderer; see access_log.hpp.
#include "core/http1/access_log.hpp"

#include <algorithm>
#include <cstring>

#include "core/base/ascii.hpp"

namespace fulmen::http1 {

namespace {

using Kind = AccessFormat::Kind;

// Bytes reserved for an atom whose output is bounded (numbers, dates, the address, the
// protocol): the longest is an IPv6 address in JSON quotes, 47.
constexpr size_t kBoundedReserve = 48;

// Atoms whose value comes from the client (or the app) and can be of any length: they share
// what the line has left, each up to kMaxValue.
bool unbounded(Kind k) noexcept {
  switch (k) {
    case Kind::kUser:
    case Kind::kRequestLine:
    case Kind::kMethod:
    case Kind::kPath:
    case Kind::kQuery:
    case Kind::kReferer:
    case Kind::kUserAgent:
    case Kind::kRequestHeader:
    case Kind::kResponseHeader:
    case Kind::kTarget:
      return true;
    default:
      return false;
  }
}

// Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no surrogates, <= U+10FFFF),
// or 0 if the byte at p does not start one.
size_t utf8_len(const unsigned char* p, size_t n) noexcept {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t i, unsigned char lo, unsigned char hi) { return i < n && p[i] >= lo && p[i] <= hi; };
  if (c < 0xC2) return 0;
  if (c < 0xE0) return cont(1, 0x80, 0xBF) ? 2 : 0;
  if (c < 0xF0) {
    unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return cont(1, lo, hi) && cont(2, 0x80, 0xBF) ? 3 : 0;
  }
  if (c < 0xF5) {
    unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return cont(1, lo, hi) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

constexpr char kHex[] = "0123456789abcdef";

// Writes into out[pos, end): never past end, never half an escape or half a UTF-8 sequence.
struct Writer {
  char* out;
  size_t pos = 0;

  void raw(std::string_view s) noexcept {
    if (s.empty()) return;
    std::memcpy(out + pos, s.data(), s.size());
    pos += s.size();
  }
  void ch(char c) noexcept { out[pos++] = c; }
  void number(uint64_t v) noexcept { pos += base::format_u64(v, out + pos); }

  // Text logs: quotes and backslashes are backslashed and every byte that is not printable ASCII
  // becomes \xHH (as Apache does), so a value can neither end a quoted field nor put terminal
  // escapes or line breaks into the log. Returns false if the value was cut.
  bool text(std::string_view s, size_t end) noexcept {
    for (unsigned char b : s) {
      if (b == '"' || b == '\\') {
        if (pos + 2 > end) return false;
        ch('\\');
        ch(char(b));
      } else if (b < 0x20 || b >= 0x7f) {
        if (pos + 4 > end) return false;
        ch('\\');
        ch('x');
        ch(kHex[b >> 4]);
        ch(kHex[b & 15]);
      } else {
        if (pos + 1 > end) return false;
        ch(char(b));
      }
    }
    return true;
  }

  // JSON string contents (RFC 8259): valid UTF-8 is copied, every byte that does not start a
  // valid sequence becomes U+FFFD, control characters and DEL are escaped.
  bool json(std::string_view s, size_t end) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t n = s.size();
    for (size_t i = 0; i < n;) {
      unsigned char b = p[i];
      if (b < 0x80) {
        const char* esc = nullptr;
        switch (b) {
          case '"': esc = "\\\""; break;
          case '\\': esc = "\\\\"; break;
          case '\n': esc = "\\n"; break;
          case '\r': esc = "\\r"; break;
          case '\t': esc = "\\t"; break;
          case '\b': esc = "\\b"; break;
          case '\f': esc = "\\f"; break;
          default: break;
        }
        if (esc) {
          if (pos + 2 > end) return false;
          raw(std::string_view(esc, 2));
        } else if (b < 0x20 || b == 0x7f) {
          if (pos + 6 > end) return false;
          raw("\\u00");
          ch(kHex[b >> 4]);
          ch(kHex[b & 15]);
        } else {
          if (pos + 1 > end) return false;
          ch(char(b));
        }
        ++i;
        continue;
      }
      size_t k = utf8_len(p + i, n - i);
      if (k == 0) {
        if (pos + 6 > end) return false;
        raw("\\ufffd");
        ++i;
        continue;
      }
      if (pos + k > end) return false;
      std::memcpy(out + pos, p + i, k);
      pos += k;
      i += k;
    }
    return true;
  }
};

std::string_view find_header(const Request* req, std::string_view lower) noexcept {
  if (!req) return {};
  for (size_t i = 0; i < req->num_headers; ++i)
    if (base::iequals(req->headers[i].name, lower)) {
      std::string_view v = req->headers[i].value;
      return v.data() ? v : std::string_view("", 0);
    }
  return {};
}

int b64_value(char c) noexcept {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// The user name of "Authorization: Basic base64(user:password)", decoded into buf (at most
// `cap` bytes, enough for any name worth logging); a null view if there is none or it is not
// valid base64.
std::string_view basic_user(const Request* req, char* buf, size_t cap) noexcept {
  std::string_view v = find_header(req, "authorization");
  if (v.size() < 6 || !base::iequals(v.substr(0, 6), "basic ")) return {};
  v.remove_prefix(6);
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  size_t n = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : v) {
    if (c == '=') break;
    int d = b64_value(c);
    if (d < 0) return {};
    acc = (acc << 6) | uint32_t(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (n == cap) break;
      buf[n++] = char((acc >> bits) & 0xff);
    }
  }
  std::string_view decoded(buf, n);
  size_t colon = decoded.find(':');
  return colon == std::string_view::npos ? decoded : decoded.substr(0, colon);
}

}  // namespace

AccessFormat::AccessFormat() { compile(kDefault); }

std::string AccessFormat::add_atom(std::string_view name) {
  auto add = [&](Kind k) {
    atoms_.push_back({k, {}, 0, 0});
    if (k == Kind::kSeconds || k == Kind::kMicros || k == Kind::kMillis || k == Kind::kDecimalSeconds)
      needs_duration_ = true;
    if (k == Kind::kPid) needs_pid_ = true;
    return std::string();
  };
  if (name.size() == 1) {
    switch (name[0]) {
      case 'h': return add(Kind::kRemoteAddr);
      case 'l': return add(Kind::kDash);
      case 'u': return add(Kind::kUser);
      case 't': return add(Kind::kTime);
      case 'r': return add(Kind::kRequestLine);
      case 'm': return add(Kind::kMethod);
      case 'U': return add(Kind::kPath);
      case 'q': return add(Kind::kQuery);
      case 'H': return add(Kind::kProtocol);
      case 's': return add(Kind::kStatus);
      case 'B': return add(Kind::kBytes);
      case 'b': return add(Kind::kBytesClf);
      case 'f': return add(Kind::kReferer);
      case 'a': return add(Kind::kUserAgent);
      case 'T': return add(Kind::kSeconds);
      case 'D': return add(Kind::kMicros);
      case 'M': return add(Kind::kMillis);
      case 'L': return add(Kind::kDecimalSeconds);
      case 'p': return add(Kind::kPid);
      default: break;
    }
  }
  if (name.size() >= 4 && name.front() == '{' && name[name.size() - 2] == '}') {
    char which = name.back();
    std::string_view inner = name.substr(1, name.size() - 3);
    std::string lower;
    for (char c : inner) lower.push_back(base::ascii_lower(c));
    if (which == 'i' || which == 'o') {
      if (!base::is_token(inner))
        return "%(" + std::string(name) + ")s: '" + std::string(inner) + "' is not a header name";
      if (which == 'i') {
        atoms_.push_back({Kind::kRequestHeader, lower, 0, 0});
        return {};
      }
      auto it = std::find(response_headers_.begin(), response_headers_.end(), lower);
      size_t slot = size_t(it - response_headers_.begin());
      if (it == response_headers_.end()) {
        if (response_headers_.size() == kMaxResponseHeaders)
          return "at most " + std::to_string(kMaxResponseHeaders) + " different response headers ({name}o) can be logged";
        response_headers_.push_back(lower);
      }
      atoms_.push_back({Kind::kResponseHeader, lower, uint8_t(slot), 0});
      return {};
    }
    if (which == 'e') {
      // The engine has no WSGI environ (and ASGI has none at all): the CGI names it can answer
      // from the request itself are mapped onto the atoms above.
      std::string upper;
      for (char c : inner) upper.push_back(c >= 'a' && c <= 'z' ? char(c - 32) : c);
      if (upper == "REMOTE_ADDR") return add(Kind::kRemoteAddr);
      if (upper == "REMOTE_PORT") return add(Kind::kRemotePort);
      if (upper == "REQUEST_METHOD") return add(Kind::kMethod);
      if (upper == "PATH_INFO") return add(Kind::kPath);
      if (upper == "QUERY_STRING") return add(Kind::kQuery);
      if (upper == "RAW_URI" || upper == "REQUEST_URI") return add(Kind::kTarget);
      if (upper == "SERVER_PROTOCOL") return add(Kind::kProtocol);
      if (upper.size() > 5 && upper.compare(0, 5, "HTTP_") == 0) {
        std::string header;
        for (char c : upper.substr(5)) header.push_back(c == '_' ? '-' : base::ascii_lower(c));
        if (base::is_token(header)) {
          atoms_.push_back({Kind::kRequestHeader, header, 0, 0});
          return {};
        }
      }
      return "%(" + std::string(name) + ")s: the access log is written by the engine, which knows only "
             "REMOTE_ADDR, REMOTE_PORT, REQUEST_METHOD, PATH_INFO, QUERY_STRING, RAW_URI, "
             "SERVER_PROTOCOL and HTTP_* of the environ";
    }
  }
  return "unknown atom %(" + std::string(name) +
         ")s; the atoms are h l u t r m U q H s B b f a T D M L p, {header}i, {header}o and {name}e";
}

void AccessFormat::finish() {
  size_t reserve = 1;  // the newline
  for (size_t i = atoms_.size(); i-- > 0;) {
    Atom& a = atoms_[i];
    a.tail = reserve;
    if (a.kind == Kind::kLiteral) reserve += a.text.size();
    else if (unbounded(a.kind)) reserve += json_ ? 4 : 1;  // null / "" / -
    else reserve += kBoundedReserve;
  }
}

std::string AccessFormat::compile(std::string_view spec) {
  AccessFormat f(*this);
  f.atoms_.clear();
  f.response_headers_.clear();
  f.json_ = f.needs_duration_ = f.needs_pid_ = false;
  auto lit = [&f](std::string_view s) {
    if (s.empty()) return;
    if (!f.atoms_.empty() && f.atoms_.back().kind == Kind::kLiteral) f.atoms_.back().text.append(s);
    else f.atoms_.push_back({Kind::kLiteral, std::string(s), 0, 0});
  };
  if (spec == kJson) {
    f.json_ = true;
    struct Field {
      std::string_view key;
      Kind kind;
    };
    static constexpr Field kFields[] = {
        {"time", Kind::kIsoTime},          {"remote_addr", Kind::kRemoteAddr},
        {"remote_port", Kind::kRemotePort}, {"method", Kind::kMethod},
        {"path", Kind::kPath},             {"query", Kind::kQuery},
        {"protocol", Kind::kProtocol},     {"status", Kind::kStatus},
        {"bytes", Kind::kBytes},           {"duration_us", Kind::kMicros},
        {"referer", Kind::kReferer},       {"user_agent", Kind::kUserAgent},
        {"user", Kind::kUser},             {"pid", Kind::kPid},
    };
    bool first = true;
    for (const Field& fl : kFields) {
      lit(first ? "{\"" : ",\"");
      first = false;
      lit(fl.key);
      lit("\":");
      f.atoms_.push_back({fl.kind, {}, 0, 0});
    }
    lit("}");
    f.needs_duration_ = f.needs_pid_ = true;
  } else {
    if (spec.empty()) return "the format is empty";
    std::string text;
    for (size_t i = 0; i < spec.size();) {
      char c = spec[i];
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
        return "control character at position " + std::to_string(i) +
               ": a format is one line (each request's line ends with a newline already)";
      }
      if (c != '%') {
        text.push_back(c);
        ++i;
        continue;
      }
      if (i + 1 < spec.size() && spec[i + 1] == '%') {
        text.push_back('%');
        i += 2;
        continue;
      }
      if (i + 1 >= spec.size() || spec[i + 1] != '(') {
        return "lone '%' at position " + std::to_string(i) +
               ": write %% for a percent sign and %(name)s for an atom, e.g. %(h)s";
      }
      size_t close = spec.find(')', i + 2);
      if (close == std::string_view::npos) {
        return "'%(' at position " + std::to_string(i) + " is not closed: write %(name)s, e.g. %(h)s";
      }
      std::string_view name = spec.substr(i + 2, close - i - 2);
      if (close + 1 >= spec.size() || (spec[close + 1] != 's' && spec[close + 1] != 'd')) {
        return "%(" + std::string(name) + ") must be followed by s (as in %(" + std::string(name) + ")s)";
      }
      lit(text);
      text.clear();
      std::string err = f.add_atom(name);
      if (!err.empty()) return err;
      i = close + 2;
    }
    lit(text);
  }
  f.finish();
  size_t fixed = f.atoms_.empty() ? 1 : f.atoms_.front().tail +
      (f.atoms_.front().kind == Kind::kLiteral ? f.atoms_.front().text.size()
       : unbounded(f.atoms_.front().kind) ? (f.json_ ? 4 : 1) : kBoundedReserve);
  if (fixed > kMaxLine / 2) {
    return "the format is too long: its fixed parts take " + std::to_string(fixed) + " bytes of a line, at most " +
           std::to_string(kMaxLine / 2) + " are allowed";
  }
  *this = std::move(f);
  return {};
}

size_t AccessFormat::render(const AccessRecord& r, char* out) const noexcept {
  Writer w{out};
  char user_buf[256];
  const Request* req = r.request;
  uint64_t us = r.duration_us > 0 ? uint64_t(r.duration_us) : 0;
  std::string_view protocol = req && req->version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
  for (const Atom& a : atoms_) {
    const size_t end = kMaxLine - a.tail;  // this atom's output must end here at the latest
    if (a.kind == Kind::kLiteral) {
      w.raw(a.text);
      continue;
    }
    // A string value made of up to five pieces (the request line), or a null view: missing.
    std::string_view parts[5];
    size_t nparts = 1;
    bool number = false;
    uint64_t num = 0;
    switch (a.kind) {
      case Kind::kRemoteAddr: parts[0] = r.remote_addr.empty() ? std::string_view("unix") : r.remote_addr; break;
      case Kind::kDash: parts[0] = json_ ? std::string_view() : std::string_view("-"); break;
      case Kind::kUser: parts[0] = basic_user(req, user_buf, sizeof user_buf); break;
      case Kind::kTime:
        if (json_) {
          parts[0] = r.log_date;
        } else {
          w.ch('[');
          w.raw(r.log_date);
          w.ch(']');
          continue;
        }
        break;
      case Kind::kIsoTime: parts[0] = r.iso_date; break;
      case Kind::kRequestLine:
        if (req) {
          parts[0] = req->method;
          parts[1] = " ";
          parts[2] = req->target;
          parts[3] = " ";
          parts[4] = protocol;
          nparts = 5;
        }
        break;
      case Kind::kMethod: if (req) parts[0] = req->method; break;
      case Kind::kPath: if (req) parts[0] = req->path; break;
      case Kind::kQuery: if (req) parts[0] = req->query.data() ? req->query : std::string_view("", 0); break;
      case Kind::kTarget: if (req) parts[0] = req->target; break;
      case Kind::kProtocol: parts[0] = protocol; break;
      case Kind::kReferer: parts[0] = find_header(req, "referer"); break;
      case Kind::kUserAgent: parts[0] = find_header(req, "user-agent"); break;
      case Kind::kRequestHeader: parts[0] = find_header(req, a.text); break;
      case Kind::kResponseHeader: if (r.response_headers) parts[0] = r.response_headers[a.slot]; break;
      case Kind::kStatus: number = true; num = uint64_t(r.status > 0 ? r.status : 0); break;
      case Kind::kBytes:
      case Kind::kBytesClf: number = true; num = r.sent; break;
      case Kind::kSeconds: number = true; num = us / 1000000; break;
      case Kind::kMillis: number = true; num = us / 1000; break;
      case Kind::kMicros: number = true; num = us; break;
      case Kind::kRemotePort: number = true; num = uint64_t(r.remote_port > 0 ? r.remote_port : 0); break;
      case Kind::kDecimalSeconds: {
        w.number(us / 1000000);
        w.ch('.');
        char frac[24];
        size_t k = base::format_u64(us % 1000000, frac);
        for (size_t z = k; z < 6; ++z) w.ch('0');
        w.raw(std::string_view(frac, k));
        continue;
      }
      case Kind::kPid:
        if (json_) {
          number = true;
          num = uint64_t(r.pid > 0 ? r.pid : 0);
        } else {
          w.ch('<');
          w.number(uint64_t(r.pid > 0 ? r.pid : 0));
          w.ch('>');
          continue;
        }
        break;
      case Kind::kLiteral: break;
    }
    if (number) {
      w.number(num);
      continue;
    }
    if (!parts[0].data()) {  // missing
      w.raw(json_ ? "null" : "-");
      continue;
    }
    if (json_) {
      w.ch('"');
      size_t stop = std::min(end - 1, w.pos + kMaxValue);
      for (size_t i = 0; i < nparts && w.json(parts[i], stop); ++i) {
      }
      w.ch('"');
    } else {
      size_t stop = std::min(end, w.pos + kMaxValue);
      for (size_t i = 0; i < nparts && w.text(parts[i], stop); ++i) {
      }
    }
  }
  w.ch('\n');
  return w.pos;
}

}  // namespace fulmen::http1
