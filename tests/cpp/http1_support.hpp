// Shared by the HTTP/1 parser tests: error names as the vectors spell them, limits from a vector,
// and exact-size buffers so ASan catches a read one byte past the input.
#pragma once

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "core/http1/parser.hpp"
#include "vectors.hpp"

namespace fulmen::test {

inline const char* error_name(http1::ParseError e) {
  using E = http1::ParseError;
  switch (e) {
#define N(x) \
  case E::x: \
    return #x;
    N(kNone) N(kBadMethod) N(kBadTarget) N(kBadVersion) N(kUnsupportedVersion) N(kBadRequestLine)
    N(kRequestLineTooLong) N(kBadHeaderName) N(kBadHeaderValue) N(kObsFold) N(kTooManyHeaders)
    N(kHeaderTooLarge) N(kBareLF) N(kBadContentLength) N(kContentLengthAndTransferEncoding)
    N(kBadTransferEncoding) N(kUnknownTransferEncoding) N(kMissingHost) N(kMultipleHost) N(kBodyTooLarge)
    N(kBadChunkSize) N(kBadChunkExtension) N(kBadChunkTerminator) N(kBadTrailer) N(kTrailerTooLarge)
    N(kHeadTooLarge)
#undef N
  }
  return "?";
}

// "limits: max_request_line=20 max_fields=3 max_field_size=20 max_body=10 max_head=100"
inline void apply_limits(const Vector& v, http1::Limits& lim, size_t& max_head) {
  const std::string* l = v.get("limits");
  if (!l) return;
  std::istringstream in(*l);
  std::string kv;
  while (in >> kv) {
    size_t eq = kv.find('=');
    std::string k = kv.substr(0, eq);
    unsigned long long n = std::strtoull(kv.substr(eq + 1).c_str(), nullptr, 10);
    if (k == "max_request_line") lim.max_request_line = n;
    else if (k == "max_fields") lim.max_fields = n;
    else if (k == "max_field_size") lim.max_field_size = n;
    else if (k == "max_body") lim.max_body = n;
    else if (k == "max_head") max_head = n;
    else throw std::runtime_error("unknown limit " + k);
  }
}

// A copy of the bytes in an allocation of exactly that size: the byte after the input is
// outside the heap block, so ASan flags any over-read.
struct ExactBuffer {
  char* p;
  size_t n;
  ExactBuffer(const char* src, size_t len) : p(static_cast<char*>(std::malloc(len ? len : 1))), n(len) {
    if (len) std::memcpy(p, src, len);
  }
  ~ExactBuffer() { std::free(p); }
  ExactBuffer(const ExactBuffer&) = delete;
  ExactBuffer& operator=(const ExactBuffer&) = delete;
};

}  // namespace fulmen::test
