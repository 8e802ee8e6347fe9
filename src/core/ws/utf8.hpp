// Incremental UTF-8 validation for WebSocket text messages and close reasons (RFC 6455 8.1,
// RFC 3629). A text message arrives in fragments, and each fragment in reads split anywhere, so
// the validator carries its state across calls and never needs the bytes again.
//
// Fail fast (what Autobahn's 6.x cases expect): a byte is refused as soon as no continuation
// could make the bytes so far valid, not when the message ends. "ED A0" is refused at A0 (every
// completion is a surrogate), "F4 90" at 90 (> U+10FFFF), "E0 80" at 80 (overlong). A message
// that ends inside a sequence is the separate verdict kIncomplete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fulmen::ws {

class Utf8Validator {
 public:
  enum class Status : uint8_t {
    kValid,       // everything so far is valid and ends on a character boundary
    kIncomplete,  // valid so far, but inside a multi-byte sequence: more bytes must follow
    kInvalid,     // a byte that can never be part of valid UTF-8 arrived (sticky)
  };

  // Validates the next piece. On kInvalid, *bad (if given) is the offset in this piece of the
  // first impossible byte; once invalid, every later call returns kInvalid with *bad = 0.
  Status feed(const char* p, size_t n, size_t* bad = nullptr) noexcept;
  Status feed(std::string_view s, size_t* bad = nullptr) noexcept {
    return feed(s.data(), s.size(), bad);
  }

  // The verdict for the bytes fed so far (kValid means a message may end here).
  Status status() const noexcept {
    return invalid_ ? Status::kInvalid : need_ ? Status::kIncomplete : Status::kValid;
  }
  void reset() noexcept { *this = Utf8Validator(); }

 private:
  uint8_t need_ = 0;   // continuation bytes still expected in the current sequence (0..3)
  uint8_t lo_ = 0x80;  // range the next continuation byte must fall in: narrower than 80..BF
  uint8_t hi_ = 0xBF;  // only right after E0/ED/F0/F4, which is how overlongs etc. fail fast
  bool invalid_ = false;
};

// One-shot check of a complete string (close reasons, tests): valid and not truncated.
bool utf8_valid(std::string_view s) noexcept;

}  // namespace fulmen::ws
