// UTF-8 validation by the table of well-formed byte sequences (Unicode 15, table 3-7):
//
//   00..7F
//   C2..DF  80..BF
//   E0      A0..BF  80..BF       (E0 80..9F would be overlong)
//   E1..EC  80..BF  80..BF
//   ED      80..9F  80..BF       (ED A0..BF would be a surrogate, U+D800..DFFF)
//   EE..EF  80..BF  80..BF
//   F0      90..BF  80..BF 80..BF (F0 80..8F would be overlong)
//   F1..F3  80..BF  80..BF 80..BF
//   F4      80..8F  80..BF 80..BF (F4 90.. would be above U+10FFFF)
//
// Only the byte right after the lead has a range narrower than 80..BF, so the state is "how many
// continuation bytes are left" plus the range for the next one. Checking each byte against that
// range refuses it at the first byte no completion could make valid. ASCII runs, the common case
// for text messages, are skipped eight bytes at a time.
#include "core/ws/utf8.hpp"

#include <cstring>

namespace fulmen::ws {

namespace {

struct Lead {
  uint8_t need;  // continuation bytes that follow; kBadLead if the byte cannot start a character
  uint8_t lo;    // range of the first continuation byte
  uint8_t hi;
};

constexpr uint8_t kBadLead = 0xFF;

struct LeadTable {
  Lead v[256];
  constexpr LeadTable() : v() {
    for (unsigned c = 0; c < 256; ++c) {
      Lead l{kBadLead, 0x80, 0xBF};
      if (c < 0x80)
        l.need = 0;
      else if (c >= 0xC2 && c <= 0xDF)
        l.need = 1;
      else if (c >= 0xE0 && c <= 0xEF)
        l.need = 2;
      else if (c >= 0xF0 && c <= 0xF4)
        l.need = 3;
      if (c == 0xE0) l.lo = 0xA0;
      if (c == 0xED) l.hi = 0x9F;
      if (c == 0xF0) l.lo = 0x90;
      if (c == 0xF4) l.hi = 0x8F;
      v[c] = l;
    }
  }
};
constexpr LeadTable kLead;

constexpr uint64_t kHighBits = 0x8080808080808080ull;

}  // namespace

Utf8Validator::Status Utf8Validator::feed(const char* p, size_t n, size_t* bad) noexcept {
  if (invalid_) {
    if (bad) *bad = 0;
    return Status::kInvalid;
  }
  const auto* s = reinterpret_cast<const uint8_t*>(p);
  size_t i = 0;
  while (i < n) {
    if (need_ == 0) {
      while (i + 8 <= n) {
        uint64_t w;
        std::memcpy(&w, s + i, 8);
        if (w & kHighBits) break;
        i += 8;
      }
      if (i == n) break;
      uint8_t c = s[i];
      if (c < 0x80) {
        ++i;
        continue;
      }
      const Lead& l = kLead.v[c];
      if (l.need == kBadLead) {
        invalid_ = true;
        if (bad) *bad = i;
        return Status::kInvalid;
      }
      need_ = l.need;
      lo_ = l.lo;
      hi_ = l.hi;
      ++i;
      continue;
    }
    uint8_t c = s[i];
    if (c < lo_ || c > hi_) {
      invalid_ = true;
      if (bad) *bad = i;
      return Status::kInvalid;
    }
    --need_;
    lo_ = 0x80;
    hi_ = 0xBF;
    ++i;
  }
  return need_ ? Status::kIncomplete : Status::kValid;
}

bool utf8_valid(std::string_view s) noexcept {
  Utf8Validator v;
  return v.feed(s) == Utf8Validator::Status::kValid;
}

}  // namespace fulmen::ws
