// Base64 by hand rather than OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock: DecodeBlock trims
// whitespace, always returns 3 bytes per 4 characters (padding decodes as zero bytes it does not
// report), and leaves the canonical-form checks to the caller, all of which the key check would
// then have to redo. The whole codec is a few lines.
#include "core/ws/base64.hpp"

namespace fulmen::ws {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr int8_t kInvalid = -1;

struct DecodeTable {
  int8_t v[256];
  constexpr DecodeTable() : v() {
    for (unsigned c = 0; c < 256; ++c) v[c] = kInvalid;
    for (int k = 0; k < 64; ++k) v[static_cast<uint8_t>(kAlphabet[k])] = static_cast<int8_t>(k);
  }
};
constexpr DecodeTable kDecode;

}  // namespace

size_t base64_encode(const uint8_t* in, size_t n, char* out) noexcept {
  size_t o = 0;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const uint32_t v = (uint32_t(in[i]) << 16) | (uint32_t(in[i + 1]) << 8) | in[i + 2];
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = kAlphabet[(v >> 6) & 63];
    out[o++] = kAlphabet[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = uint32_t(in[i]) << 16;
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = '=';
    out[o++] = '=';
  } else if (n - i == 2) {
    const uint32_t v = (uint32_t(in[i]) << 16) | (uint32_t(in[i + 1]) << 8);
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = kAlphabet[(v >> 6) & 63];
    out[o++] = '=';
  }
  return o;
}

ptrdiff_t base64_decode(std::string_view in, uint8_t* out, size_t cap) noexcept {
  if (in.size() % 4 != 0) return -1;
  size_t pad = 0;
  if (!in.empty() && in.back() == '=') pad = in.size() >= 2 && in[in.size() - 2] == '=' ? 2 : 1;
  const size_t decoded = in.size() / 4 * 3 - pad;
  if (decoded > cap) return -1;
  size_t o = 0;
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    const size_t chars = last ? 4 - pad : 4;  // alphabet characters in this quantum
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      int8_t d = 0;
      if (k < chars) {
        d = kDecode.v[static_cast<uint8_t>(in[i + k])];
        if (d == kInvalid) return -1;  // includes a '=' before the final padding
      }
      v = (v << 6) | static_cast<uint32_t>(d);
    }
    // Canonical: the bits below the last whole byte must be zero.
    if (chars == 3 && (v & 0xFF) != 0) return -1;
    if (chars == 2 && (v & 0xFFFF) != 0) return -1;
    out[o++] = static_cast<uint8_t>(v >> 16);
    if (chars >= 3) out[o++] = static_cast<uint8_t>(v >> 8);
    if (chars == 4) out[o++] = static_cast<uint8_t>(v);
  }
  return static_cast<ptrdiff_t>(o);
}

}  // namespace fulmen::ws
