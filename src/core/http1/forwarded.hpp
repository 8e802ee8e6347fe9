// Proxy headers: what a trusted reverse proxy says about the original request (--proxy-headers).
//
// Bytes in, views out, as in parser.hpp: read_forwarded() looks at a parsed request's headers
// once per request and returns views into the request head; it allocates nothing. The trust
// decision (is the peer a proxy we believe?) is the caller's, made once per connection with
// TrustList; inside the headers, X-Forwarded-For / Forwarded "for=" hops are walked from the right
// and the right-most one that is not a trusted proxy is the client (Uvicorn 0.30+).
//
// Which headers are believed is explicit (--forwarded-headers): by default X-Forwarded-For and
// X-Forwarded-Proto only, as Uvicorn and Gunicorn. A proxy that only sets those passes the
// client's own X-Forwarded-Host or Forwarded through, so they must not be read unless chosen.
// Choosing Forwarded (RFC 7239) excludes the X-Forwarded-* headers (the option checks it).
//
// Errors: the hops the walk reads (the trusted proxies' part, right of and including the
// client) must parse; if one does not, read_forwarded() returns false and the request is
// answered 400 (falling back to the peer, the proxy, would hand every client the proxy's
// address). Hops further left are never parsed. X-Forwarded-Proto/-Host/-Port are read one by
// one: a malformed one, or a scheme other than http/https/ws/wss, is ignored alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/http1/parser.hpp"

namespace fulmen::http1 {

// One trusted network: the first `prefix` bits of `addr` (an IPv4 address uses bytes 0-3).
struct IpNet {
  bool v6 = false;
  uint8_t prefix = 0;
  uint8_t addr[16] = {};
};

// "1.2.3.4", "10.0.0.0/8", "::1", "[::1]", "fd00::/8". False if it is none of these.
bool parse_ip_net(std::string_view text, IpNet* out) noexcept;
// An IP address as text ("1.2.3.4", "::1"; no brackets, no port) to bytes. False if it is not one.
bool parse_ip(std::string_view text, bool* v6, uint8_t addr[16]) noexcept;

// --forwarded-allow-ips.
struct TrustList {
  bool all = false;         // "*": every peer; the left-most X-Forwarded-For entry is the client
  bool unix_peers = false;  // "unix": peers on Unix sockets (which have no address to match)
  std::vector<IpNet> nets;
  // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) also matches IPv4 networks.
  bool contains(bool v6, const uint8_t* addr) const noexcept;
  bool contains_text(std::string_view ip) const noexcept;  // false for anything but an IP
};

// What the trusted headers say. Views point into the request head (valid while it is).
struct ForwardedInfo {
  std::string_view client;       // address (IP text without brackets, "unknown" or an
                                 // obfuscated "_id"); empty: not given, keep the peer's
  int client_port = 0;           // 0 when the header gave no port
  std::string_view scheme;       // "http" or "https" (static strings); empty: not given
  std::string_view host;         // the Host the client used ("name[:port]"); empty: not given
  std::string_view server_name;  // host without its port
  int server_port = -1;          // from the host or X-Forwarded-Port; -1: not given
  bool any() const noexcept { return !client.empty() || !scheme.empty() || !host.empty() || server_port >= 0; }
};

// Most hops of a Forwarded / X-Forwarded-For list that are walked (from the right); a list whose
// walked hops are all trusted proxies and that is longer is malformed.
inline constexpr size_t kMaxForwardedHops = 64;

// --forwarded-headers, a bit set.
enum ForwardedHeader : unsigned {
  kXForwardedFor = 1,
  kXForwardedProto = 2,
  kXForwardedHost = 4,
  kXForwardedPort = 8,
  kForwardedRfc7239 = 16,  // alone: the X-Forwarded-* bits are then ignored
};
inline constexpr unsigned kDefaultForwardedHeaders = kXForwardedFor | kXForwardedProto;
// "x-forwarded-for" ... "forwarded" (any case) to its bit. False for another name.
bool parse_forwarded_header_name(std::string_view name, unsigned* bit) noexcept;

// False: the trusted part is malformed (answer 400); *out is then empty.
bool read_forwarded(const Request& req, const TrustList& trust, unsigned headers, ForwardedInfo* out) noexcept;

}  // namespace fulmen::http1
