// Proxy headers (forwarded.hpp): Forwarded (RFC 7239) and X-Forwarded-For/-Proto/-Host/-Port.
#include "core/http1/forwarded.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core/base/ascii.hpp"

namespace fulmen::http1 {

namespace {

bool is_ows(char c) noexcept { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

// 1*5 DIGIT, at most 65535.
bool parse_port(std::string_view s, int* out) noexcept {
  if (s.empty() || s.size() > 5) return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > 65535) return false;
  *out = v;
  return true;
}

// RFC 7239 obfnode / obfport: "_" 1*( ALPHA / DIGIT / "." / "_" / "-").
bool is_obfuscated(std::string_view s) noexcept {
  if (s.size() < 2 || s[0] != '_') return false;
  for (char c : s.substr(1)) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// Iterates the elements of a comma-separated list over every field line with one name (several
// lines of a list header are one list, RFC 9110 5.3). Commas inside quoted strings do not split.
// Empty elements are skipped (RFC 9110 5.6.1).
class ListCursor {
 public:
  ListCursor(const Request& req, std::string_view lower_name) noexcept : req_(req), name_(lower_name) {}
  bool next(std::string_view* out) noexcept {
    for (;;) {
      if (rest_.empty() && !advance_line()) return false;
      bool quoted = false;
      size_t i = 0;
      for (; i < rest_.size(); ++i) {
        char c = rest_[i];
        if (c == '"') quoted = !quoted;
        else if (c == ',' && !quoted) break;
      }
      std::string_view item = trim(rest_.substr(0, i));
      rest_ = i < rest_.size() ? rest_.substr(i + 1) : std::string_view();
      if (!item.empty()) {
        *out = item;
        return true;
      }
    }
  }

 private:
  bool advance_line() noexcept {
    while (line_ < req_.num_headers) {
      const Header& h = req_.headers[line_++];
      if (h.name.size() == name_.size() && base::iequals(h.name, name_)) {
        rest_ = h.value;
        if (!rest_.empty()) return true;
      }
    }
    return false;
  }
  const Request& req_;
  std::string_view name_;
  size_t line_ = 0;
  std::string_view rest_;
};

// "http"/"ws" -> "http", "https"/"wss" -> "https" (the WebSocket scope maps them back).
bool normalize_scheme(std::string_view s, std::string_view* out) noexcept {
  if (base::iequals(s, "http") || base::iequals(s, "ws")) *out = "http";
  else if (base::iequals(s, "https") || base::iequals(s, "wss")) *out = "https";
  else return false;
  return true;
}

// RFC 3986 reg-name characters (unreserved, pct-encoded, sub-delims except the list separators).
bool is_reg_name(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
    if (c == '%') {
      if (i + 2 >= s.size()) return false;
      auto hex = [](char h) { return (h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'); };
      if (!hex(s[i + 1]) || !hex(s[i + 2])) return false;
      i += 2;
      continue;
    }
    if (std::strchr("-._~!$&'()*+=", c) == nullptr || c == 0) return false;
  }
  return true;
}

// "[inside]" or "name", then optionally ":" and a port: the split that Host and RFC 7239 nodes
// share (each then checks the parts its own way).
struct HostPort {
  std::string_view name;  // without the brackets
  std::string_view port;  // after the ':' (when has_port)
  bool bracketed = false;
  bool has_port = false;
};

bool split_host_port(std::string_view s, HostPort* out) noexcept {
  *out = HostPort{};
  size_t rest;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos) return false;
    out->bracketed = true;
    out->name = s.substr(1, close - 1);
    rest = close + 1;
    if (rest < s.size() && s[rest] != ':') return false;
  } else {
    rest = std::min(s.find(':'), s.size());
    out->name = s.substr(0, rest);
  }
  if (rest < s.size()) {
    out->has_port = true;
    out->port = s.substr(rest + 1);
  }
  return true;
}

// Host = IP-literal / IPv4 / reg-name, then optional ":" port. Sets the name and the port (-1).
bool parse_host(std::string_view host, std::string_view* name, int* port) noexcept {
  *port = -1;
  HostPort hp;
  if (!split_host_port(host, &hp)) return false;
  if (hp.bracketed) {
    bool v6;
    uint8_t addr[16];
    if (!parse_ip(hp.name, &v6, addr) || !v6) return false;
    *name = host.substr(0, hp.name.size() + 2);  // the brackets stay
  } else {
    if (!is_reg_name(hp.name)) return false;
    *name = hp.name;
  }
  return !hp.has_port || parse_port(hp.port, port);
}

// One X-Forwarded-For hop: "1.2.3.4", "1.2.3.4:5678", "::1", "[::1]", "[::1]:5678".
bool parse_xff_hop(std::string_view hop, std::string_view* ip, int* port, bool* is_ip) noexcept {
  bool v6;
  uint8_t addr[16];
  *port = 0;
  *is_ip = true;
  if (!hop.empty() && hop[0] == '[') {
    size_t close = hop.find(']');
    if (close == std::string_view::npos) return false;
    *ip = hop.substr(1, close - 1);
    if (!parse_ip(*ip, &v6, addr) || !v6) return false;
    if (close + 1 == hop.size()) return true;
    return hop[close + 1] == ':' && parse_port(hop.substr(close + 2), port);
  }
  if (parse_ip(hop, &v6, addr)) {
    *ip = hop;
    return true;
  }
  size_t colon = hop.find(':');
  if (colon == std::string_view::npos || hop.find(':', colon + 1) != std::string_view::npos) return false;
  *ip = hop.substr(0, colon);
  return parse_ip(*ip, &v6, addr) && !v6 && parse_port(hop.substr(colon + 1), port);
}

// RFC 7239 node: nodename [ ":" node-port ]; nodename = IPv4 / "[" IPv6 "]" / "unknown" / obfnode.
bool parse_node(std::string_view node, std::string_view* name, int* port, bool* is_ip) noexcept {
  *port = 0;
  HostPort hp;
  if (!split_host_port(node, &hp)) return false;
  bool v6;
  uint8_t addr[16];
  *name = hp.name;
  if (hp.bracketed) {
    if (!parse_ip(hp.name, &v6, addr) || !v6) return false;
    *is_ip = true;
  } else if (parse_ip(hp.name, &v6, addr) && !v6) {
    *is_ip = true;
  } else if (base::iequals(hp.name, "unknown") || is_obfuscated(hp.name)) {
    *is_ip = false;
  } else {
    return false;
  }
  return !hp.has_port || parse_port(hp.port, port) || is_obfuscated(hp.port);
}

// value = token / quoted-string. Quoted-pairs are refused: the result is a view, never a copy.
bool parse_pair_value(std::string_view v, std::string_view* out) noexcept {
  if (!v.empty() && v[0] == '"') {
    if (v.size() < 2 || v.back() != '"') return false;
    v = v.substr(1, v.size() - 2);
    for (char c : v) {
      unsigned char u = static_cast<unsigned char>(c);
      if (c == '"' || c == '\\' || (u < 0x20 && c != '\t') || u == 0x7f) return false;
    }
    *out = v;
    return true;
  }
  if (!base::is_token(v)) return false;
  *out = v;
  return true;
}

struct Hop {
  std::string_view client;  // empty: the element had no for=
  int port = 0;
  std::string_view scheme;
  std::string_view host;
};

// One forwarded-element: forwarded-pair *( ";" forwarded-pair ), each parameter at most once.
bool parse_forwarded_element(std::string_view element, Hop* hop, bool* is_ip) noexcept {
  *hop = Hop{};
  *is_ip = false;
  bool seen_for = false, seen_proto = false, seen_host = false, seen_by = false;
  while (true) {
    bool quoted = false;
    size_t i = 0;
    for (; i < element.size(); ++i) {
      if (element[i] == '"') quoted = !quoted;
      else if (element[i] == ';' && !quoted) break;
    }
    std::string_view pair = trim(element.substr(0, i));
    size_t eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) return false;
    std::string_view name = pair.substr(0, eq), value;
    if (!base::is_token(name) || !parse_pair_value(pair.substr(eq + 1), &value)) return false;
    if (base::iequals(name, "for")) {
      if (seen_for) return false;
      seen_for = true;
      if (!parse_node(value, &hop->client, &hop->port, is_ip)) return false;
    } else if (base::iequals(name, "proto")) {
      if (seen_proto) return false;
      seen_proto = true;
      if (!normalize_scheme(value, &hop->scheme)) return false;
    } else if (base::iequals(name, "host")) {
      if (seen_host) return false;
      seen_host = true;
      std::string_view host_name;
      int port;
      if (!parse_host(value, &host_name, &port)) return false;
      hop->host = value;
    } else if (base::iequals(name, "by")) {
      if (seen_by) return false;
      seen_by = true;
    }  // other (extension) parameters: well-formed, ignored
    if (i >= element.size()) return true;
    element = element.substr(i + 1);
  }
}

// Keeps the last kMaxForwardedHops elements of a list header (on the stack) so that it can be
// walked from the right. `total` counts every element, also those that fell out on the left.
struct Tail {
  std::string_view items[kMaxForwardedHops];
  size_t total = 0;
  void fill(const Request& req, std::string_view lower_name) noexcept {
    ListCursor cur(req, lower_name);
    std::string_view item;
    while (cur.next(&item)) items[total++ % kMaxForwardedHops] = item;
  }
  size_t kept() const noexcept { return total < kMaxForwardedHops ? total : kMaxForwardedHops; }
  // The element at `index` from the left (index >= total - kept()).
  std::string_view at(size_t index) const noexcept { return items[index % kMaxForwardedHops]; }
};

// Forwarded: walked from the right like X-Forwarded-For. Every element up to and including the
// client's was written by a trusted proxy, so it must parse and name the hop (for=); elements
// further left are never parsed.
bool read_rfc7239(const Request& req, const TrustList& trust, ForwardedInfo* out) noexcept {
  Tail tail;
  tail.fill(req, "forwarded");
  if (tail.total == 0) return true;
  Hop hop, chosen;
  bool found = false;
  for (size_t k = 0; k < tail.kept(); ++k) {
    bool is_ip;
    if (!parse_forwarded_element(tail.at(tail.total - 1 - k), &hop, &is_ip) || hop.client.empty()) return false;
    chosen = hop;
    if (!(is_ip && trust.contains_text(hop.client))) {
      found = true;
      break;
    }
  }
  // Every hop trusted (or "*"): the left-most one, unless the list is longer than we look.
  if (!found && tail.total > tail.kept()) return false;
  out->client = chosen.client;
  out->client_port = chosen.port;
  out->scheme = chosen.scheme;
  if (!chosen.host.empty()) {
    out->host = chosen.host;
    parse_host(chosen.host, &out->server_name, &out->server_port);
  }
  return true;
}

// The element of a list header at `index` when the list has `hops` elements (it was appended
// to hop by hop, as X-Forwarded-For was), otherwise its right-most element: the one the trusted
// proxy next to us wrote. Empty if the header is absent. Elements are not parsed here.
std::string_view pick(const Request& req, std::string_view lower_name, size_t hops, size_t index) noexcept {
  ListCursor cur(req, lower_name);
  std::string_view item, at, last;
  size_t n = 0;
  while (cur.next(&item)) {
    if (n == index) at = item;
    last = item;
    ++n;
  }
  return n == hops ? at : last;
}

// X-Forwarded-For is walked from the right: the right-most hop was written by the trusted peer,
// each hop that is a trusted proxy vouches for the one on its left, and the first one that is
// not trusted is the client. Hops left of it are never parsed (the client may write anything
// there). A malformed hop in the trusted part is an error (400), never a reason to fall back to
// the peer's address. X-Forwarded-Proto/-Host/-Port are read independently: a malformed one is
// ignored alone.
bool read_x_forwarded(const Request& req, const TrustList& trust, unsigned headers,
                      ForwardedInfo* out) noexcept {
  size_t hops = SIZE_MAX, index = 0;  // no X-Forwarded-For: the right-most proto/host/port
  if (headers & kXForwardedFor) {
    Tail tail;
    tail.fill(req, "x-forwarded-for");
    if (tail.total > 0) {
      bool found = false;
      for (size_t k = 0; k < tail.kept(); ++k) {
        std::string_view ip;
        int port;
        bool is_ip;
        size_t i = tail.total - 1 - k;
        if (!parse_xff_hop(tail.at(i), &ip, &port, &is_ip)) return false;
        out->client = ip;
        out->client_port = port;
        index = i;
        if (!trust.contains_text(ip)) {
          found = true;
          break;
        }
      }
      if (!found && tail.total > tail.kept()) return false;
      hops = tail.total;
    }
  }
  if (headers & kXForwardedProto) {
    std::string_view proto = pick(req, "x-forwarded-proto", hops, index), scheme;
    if (!proto.empty() && normalize_scheme(proto, &scheme)) out->scheme = scheme;
  }
  if (headers & kXForwardedHost) {
    std::string_view host = pick(req, "x-forwarded-host", hops, index), name;
    int port;
    if (!host.empty() && parse_host(host, &name, &port)) {
      out->host = host;
      out->server_name = name;
      out->server_port = port;
    }
  }
  if (headers & kXForwardedPort) {
    std::string_view text = pick(req, "x-forwarded-port", hops, index);
    int p;
    // The Host's own port wins: it is what the client asked for.
    if (!text.empty() && parse_port(text, &p) && out->server_port < 0) out->server_port = p;
  }
  return true;
}

}  // namespace

bool parse_ip(std::string_view text, bool* v6, uint8_t addr[16]) noexcept {
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = 0;
  std::memset(addr, 0, 16);
  if (text.find(':') == std::string_view::npos) {
    *v6 = false;
    return inet_pton(AF_INET, buf, addr) == 1;
  }
  *v6 = true;
  return inet_pton(AF_INET6, buf, addr) == 1;
}

bool parse_ip_net(std::string_view text, IpNet* out) noexcept {
  *out = IpNet{};
  std::string_view ip = text;
  int prefix = -1;
  size_t slash = text.find('/');
  if (slash != std::string_view::npos) {
    ip = text.substr(0, slash);
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3) return false;
    prefix = 0;
    for (char c : p) {
      if (c < '0' || c > '9') return false;
      prefix = prefix * 10 + (c - '0');
    }
  }
  if (ip.size() >= 2 && ip.front() == '[' && ip.back() == ']') ip = ip.substr(1, ip.size() - 2);
  if (!parse_ip(ip, &out->v6, out->addr)) return false;
  int max = out->v6 ? 128 : 32;
  if (prefix < 0) prefix = max;
  if (prefix > max) return false;
  out->prefix = uint8_t(prefix);
  return true;
}

namespace {
bool prefix_match(const uint8_t* a, const uint8_t* b, int bits) noexcept {
  int whole = bits / 8;
  if (std::memcmp(a, b, size_t(whole)) != 0) return false;
  int rest = bits % 8;
  if (rest == 0) return true;
  uint8_t mask = uint8_t(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}
}  // namespace

bool TrustList::contains(bool v6, const uint8_t* addr) const noexcept {
  if (all) return true;
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  bool mapped = v6 && std::memcmp(addr, kMapped, 12) == 0;
  for (const IpNet& n : nets) {
    if (n.v6 == v6 && prefix_match(n.addr, addr, n.prefix)) return true;
    if (mapped && !n.v6 && prefix_match(n.addr, addr + 12, n.prefix)) return true;
  }
  return false;
}

bool TrustList::contains_text(std::string_view ip) const noexcept {
  if (all) return true;
  bool v6;
  uint8_t addr[16];
  return parse_ip(ip, &v6, addr) && contains(v6, addr);
}

bool parse_forwarded_header_name(std::string_view name, unsigned* bit) noexcept {
  static constexpr std::pair<std::string_view, unsigned> kNames[] = {
      {"x-forwarded-for", kXForwardedFor},   {"x-forwarded-proto", kXForwardedProto},
      {"x-forwarded-host", kXForwardedHost}, {"x-forwarded-port", kXForwardedPort},
      {"forwarded", kForwardedRfc7239}};
  for (auto& [n, b] : kNames) {
    if (name.size() == n.size() && base::iequals(name, n)) {
      *bit = b;
      return true;
    }
  }
  return false;
}

bool read_forwarded(const Request& req, const TrustList& trust, unsigned headers, ForwardedInfo* out) noexcept {
  *out = ForwardedInfo{};
  bool ok = (headers & kForwardedRfc7239) ? read_rfc7239(req, trust, out) : read_x_forwarded(req, trust, headers, out);
  if (!ok) {
    *out = ForwardedInfo{};
    return false;
  }
  // A Host without a port: the default port of the scheme the client used.
  if (!out->host.empty() && out->server_port < 0) out->server_port = out->scheme == "https" ? 443 : 80;
  return true;
}

}  // namespace fulmen::http1
