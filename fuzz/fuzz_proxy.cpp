// libFuzzer target for the parsers that run in front of HTTP when Fulmen sits behind a proxy:
// the PROXY protocol header (v1 and v2) and the proxy headers (Forwarded, X-Forwarded-*).
//
// Input layout: byte 0 picks the parser (even: PROXY protocol, odd: proxy headers) and, for the
// headers, the trust list; the rest is the input. Every buffer ends exactly where its allocation
// ends (ExactBuf), so ASan reports a read one byte past the data; every view returned is read.
//
// Oracles (abort on violation), PROXY protocol: a header fed whole and fed as any prefix agree (a
// prefix is "incomplete" or already the final answer); a result never exceeds the input or the
// protocol's length bounds; re-parsing exactly the bytes the header used gives the same header.
// Proxy headers: the views lie inside the header values; a false return leaves nothing set;
// ports and schemes stay in range; the client is an address the trust walk could have chosen.
//
// The regression test (tests/cpp/test_fuzz_regressions_proxy.cpp) compiles this file and calls
// LLVMFuzzerTestOneInput on every file in fuzz/regressions/proxy/ and fuzz/seeds/proxy/.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "core/http1/forwarded.hpp"
#include "core/http1/proxy_protocol.hpp"
#include "fuzz_support.hpp"

using namespace fulmen::http1;
using namespace fulmen::fuzz;

namespace {

bool same(const ProxyHeader& a, const ProxyHeader& b) {
  return a.version == b.version && a.has_address == b.has_address && a.v6 == b.v6 &&
         std::memcmp(a.src, b.src, 16) == 0 && std::memcmp(a.dst, b.dst, 16) == 0 &&
         a.src_port == b.src_port && a.dst_port == b.dst_port;
}

ptrdiff_t parse(const uint8_t* data, size_t n, ProxyHeader* h) {
  ExactBuf b(reinterpret_cast<const char*>(data), n);
  return parse_proxy_header(b.p, n, h);
}

void fuzz_proxy_protocol(const uint8_t* data, size_t size) {
  ProxyHeader whole;
  ptrdiff_t r = parse(data, size, &whole);
  FUZZ_CHECK(r == kProxyIncomplete || r == kProxyError || (r > 0 && size_t(r) <= size));
  if (r > 0) {
    FUZZ_CHECK(whole.version == 1 || whole.version == 2);
    FUZZ_CHECK(size_t(r) <= (whole.version == 1 ? kProxyV1MaxLength : kProxyV2MaxLength));
    ProxyHeader again;
    FUZZ_CHECK(parse(data, size_t(r), &again) == r && same(again, whole));
  }
  // Every prefix: still incomplete, or already the final answer.
  size_t step = size > 512 ? size / 256 : 1;
  for (size_t k = 0; k < size; k += step) {
    ProxyHeader h;
    ptrdiff_t p = parse(data, k, &h);
    if (p == kProxyIncomplete) continue;
    FUZZ_CHECK(p == r);
    if (p > 0) FUZZ_CHECK(same(h, whole));
  }
}

bool inside(std::string_view v, const std::vector<std::string_view>& values) {
  if (v.empty()) return true;
  for (std::string_view s : values)
    if (v.data() >= s.data() && v.data() + v.size() <= s.data() + s.size()) return true;
  return v == "http" || v == "https";  // the scheme's static strings
}

void fuzz_headers(uint8_t selector, const uint8_t* data, size_t size) {
  static const char* kNames[] = {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                                 "X-Forwarded-Port", "Forwarded", "Host"};
  // Lines "k<value>": k picks the header name; each value in its own exact allocation.
  std::vector<ExactBuf*> bufs;
  std::vector<Header> headers;
  std::vector<std::string_view> values;
  size_t i = 0;
  while (i < size && headers.size() < 16) {
    size_t end = i;
    while (end < size && data[end] != '\n') ++end;
    if (end > i) {
      const char* name = kNames[data[i] % 6];
      size_t n = end - i - 1;
      auto* b = new ExactBuf(reinterpret_cast<const char*>(data) + i + 1, n);
      bufs.push_back(b);
      headers.push_back({name, std::string_view(b->p, n)});
      values.push_back(headers.back().value);
    }
    i = end + 1;
  }
  Request req;
  req.headers = headers.data();
  req.num_headers = headers.size();
  req.headers_capacity = headers.size();
  TrustList trust;
  IpNet net;
  switch ((selector >> 1) % 3) {
    case 0:
      parse_ip_net("127.0.0.1", &net);
      trust.nets.push_back(net);
      break;
    case 1:
      parse_ip_net("10.0.0.0/8", &net);
      trust.nets.push_back(net);
      parse_ip_net("::1", &net);
      trust.nets.push_back(net);
      break;
    default:
      trust.all = true;
  }
  ForwardedInfo f;
  // Which headers are believed (--forwarded-headers): every X-Forwarded-* subset, or Forwarded.
  unsigned which = (selector >> 3) % 17;
  if (which == 16 || which == 0) which = kForwardedRfc7239;
  bool ok = read_forwarded(req, trust, which, &f);
  if (!ok) FUZZ_CHECK(!f.any() && f.client.empty() && f.client_port == 0);
  for (std::string_view v : {f.client, f.scheme, f.host, f.server_name}) {
    FUZZ_CHECK(inside(v, values));
    touch(v);
  }
  FUZZ_CHECK(f.scheme.empty() || f.scheme == "http" || f.scheme == "https");
  FUZZ_CHECK(f.client_port >= 0 && f.client_port <= 65535);
  FUZZ_CHECK(f.server_port >= -1 && f.server_port <= 65535);
  FUZZ_CHECK(f.host.empty() == f.server_name.empty());
  if (!f.host.empty()) FUZZ_CHECK(f.server_port >= 0);
  // Parsing an IP the walk returned gives the same answer twice (no hidden state).
  if (!f.client.empty()) FUZZ_CHECK(trust.contains_text(f.client) == trust.contains_text(f.client));
  for (ExactBuf* b : bufs) delete b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] % 2 == 0) fuzz_proxy_protocol(data + 1, size - 1);
  else fuzz_headers(data[0], data + 1, size - 1);
  return 0;
}
