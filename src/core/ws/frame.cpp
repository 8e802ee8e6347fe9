// WebSocket frame parser and server frame writer (RFC 6455 5.2-5.7, RFC 7692 6 for RSV1).
//
// Shape of FrameParser::feed():
//   * The header (2 to 14 bytes) is gathered into head_ in stages: byte 0, byte 1, the extended
//     length, the masking key. Each stage is checked the moment its last byte arrives, always in
//     that order, so an input fails at the same byte and with the same error however it is split.
//     Copying a few header bytes costs nothing next to a syscall and keeps one code path.
//   * Data payload is unmasked in place and handed out as it arrives, one piece per call; text is
//     run through the UTF-8 validator on the way, so a bad byte fails the message at once.
//   * Control payload (<= 125 bytes) is gathered in control_ and handed out whole, checked.
#include "core/ws/frame.hpp"

#include <algorithm>
#include <cstring>

namespace fulmen::ws {

namespace {

constexpr uint8_t kFin = 0x80;
constexpr uint8_t kRsv1 = 0x40;
constexpr uint8_t kRsv2 = 0x20;
constexpr uint8_t kRsv3 = 0x10;
constexpr uint8_t kOpcodeBits = 0x0F;
constexpr uint8_t kMaskBit = 0x80;
constexpr uint8_t kLength16 = 126;  // 7-bit length values that announce an extended length
constexpr uint8_t kLength64 = 127;

constexpr bool known_opcode(uint8_t op) noexcept {
  return op <= 0x2 || (op >= 0x8 && op <= 0xA);
}

}  // namespace

uint16_t close_code_for(FrameError e) noexcept {
  switch (e) {
    case FrameError::kNone:
      return close_code::kNormal;
    case FrameError::kMessageTooBig:
      return close_code::kMessageTooBig;
    case FrameError::kInvalidUtf8:
      return close_code::kInvalidPayload;
    default:
      return close_code::kProtocolError;
  }
}

const char* error_reason(FrameError e) noexcept {
  switch (e) {
    case FrameError::kNone:
      return "no error";
    case FrameError::kReservedBits:
      return "reserved bits set";
    case FrameError::kUnknownOpcode:
      return "unknown opcode";
    case FrameError::kFragmentedControl:
      return "fragmented control frame";
    case FrameError::kUnexpectedContinuation:
      return "continuation frame without a message";
    case FrameError::kExpectedContinuation:
      return "new message inside a fragmented message";
    case FrameError::kUnmasked:
      return "client frame not masked";
    case FrameError::kControlTooLong:
      return "control frame payload too long";
    case FrameError::kLengthTopBit:
      return "payload length has the top bit set";
    case FrameError::kMessageTooBig:
      return "message too big";
    case FrameError::kCloseTooShort:
      return "close frame with a 1-byte payload";
    case FrameError::kBadCloseCode:
      return "invalid close code";
    case FrameError::kInvalidUtf8:
      return "invalid UTF-8";
  }
  return "unknown error";
}

// ---- parsing ------------------------------------------------------------------------------------

void FrameParser::reset() noexcept {
  header_ = FrameHeader();
  state_ = State::kHeader;
  stage_ = HeadStage::kByte0;
  head_len_ = 0;
  head_need_ = 1;
  mask_phase_ = 0;
  control_len_ = 0;
  remaining_ = 0;
  expect_continuation_ = false;
  message_opcode_ = Opcode::kText;
  message_compressed_ = false;
  validating_ = false;
  message_size_ = 0;
  error_ = FrameError::kNone;
  utf8_.reset();
}

FrameError FrameParser::check_first_byte(uint8_t b) noexcept {
  const uint8_t op = b & kOpcodeBits;
  if (!known_opcode(op)) return FrameError::kUnknownOpcode;
  const auto opcode = static_cast<Opcode>(op);
  const bool fin = (b & kFin) != 0;
  const bool rsv1 = (b & kRsv1) != 0;
  if (b & (kRsv2 | kRsv3)) return FrameError::kReservedBits;
  // RFC 7692 6: only the first frame of a data message may carry the "compressed" bit.
  if (rsv1 && (!options_.allow_rsv1 || opcode == Opcode::kContinuation || is_control(opcode)))
    return FrameError::kReservedBits;
  if (is_control(opcode)) {
    if (!fin) return FrameError::kFragmentedControl;
  } else if (opcode == Opcode::kContinuation) {
    if (!expect_continuation_) return FrameError::kUnexpectedContinuation;
    if (fin) expect_continuation_ = false;
  } else {
    if (expect_continuation_) return FrameError::kExpectedContinuation;
    // The first frame of a new message.
    expect_continuation_ = !fin;
    message_opcode_ = opcode;
    message_compressed_ = rsv1;
    message_size_ = 0;
    validating_ = opcode == Opcode::kText && !rsv1 && options_.validate_utf8;
    utf8_.reset();
  }
  header_.opcode = opcode;
  header_.fin = fin;
  header_.rsv1 = rsv1;
  return FrameError::kNone;
}

FrameError FrameParser::check_second_byte(uint8_t b) noexcept {
  if (!(b & kMaskBit)) return FrameError::kUnmasked;
  if (is_control(header_.opcode) && (b & 0x7F) > kMaxControlPayload)
    return FrameError::kControlTooLong;
  return FrameError::kNone;
}

FrameError FrameParser::check_length(uint64_t length) noexcept {
  header_.length = length;
  if (is_control(header_.opcode)) return FrameError::kNone;
  // message_size_ never exceeds the limit, so the subtraction cannot wrap.
  const uint64_t room =
      options_.max_message ? options_.max_message - message_size_ : UINT64_MAX - message_size_;
  if (length > room) return FrameError::kMessageTooBig;
  message_size_ += length;
  return FrameError::kNone;
}

void FrameParser::unmask(char* p, size_t n) noexcept {
  apply_mask(p, n, header_.mask, mask_phase_);
  mask_phase_ = static_cast<uint8_t>((mask_phase_ + n) & 3);
}

FrameParser::Result FrameParser::fail(FrameError e, size_t consumed) noexcept {
  state_ = State::kError;
  error_ = e;
  Result r;
  r.consumed = consumed;
  r.event = Event::kError;
  r.error = e;
  return r;
}

FrameParser::Result FrameParser::feed(char* p, size_t n) noexcept {
  Result r;
  if (state_ == State::kError) {
    r.event = Event::kError;
    r.error = error_;
    return r;
  }
  size_t i = 0;

  if (state_ == State::kHeader) {
    for (;;) {
      const size_t take = std::min<size_t>(head_need_ - head_len_, n - i);
      if (take) std::memcpy(head_ + head_len_, p + i, take);
      head_len_ = static_cast<uint8_t>(head_len_ + take);
      i += take;
      if (head_len_ < head_need_) {
        r.consumed = i;
        return r;
      }
      FrameError e = FrameError::kNone;
      switch (stage_) {
        case HeadStage::kByte0:
          e = check_first_byte(head_[0]);
          stage_ = HeadStage::kByte1;
          head_need_ = 2;
          break;
        case HeadStage::kByte1: {
          e = check_second_byte(head_[1]);
          const uint8_t len7 = head_[1] & 0x7F;
          if (len7 == kLength16 || len7 == kLength64) {
            stage_ = HeadStage::kExtLength;
            head_need_ = len7 == kLength16 ? 4 : 10;
          } else {
            if (e == FrameError::kNone) e = check_length(len7);
            stage_ = HeadStage::kMaskKey;
            head_need_ = 6;
          }
          break;
        }
        case HeadStage::kExtLength: {
          // Big-endian. RFC 6455 5.2's "the minimal number of bytes MUST be used" binds the
          // sender; a non-minimal form (5 in the 64-bit form) is still unambiguous, and refusing
          // it protects nothing, so it is accepted.
          uint64_t len = 0;
          for (uint8_t k = 2; k < head_len_; ++k) len = (len << 8) | head_[k];
          if (head_len_ == 10 && (len >> 63))
            e = FrameError::kLengthTopBit;
          else
            e = check_length(len);
          stage_ = HeadStage::kMaskKey;
          head_need_ = static_cast<uint8_t>(head_len_ + 4);
          break;
        }
        case HeadStage::kMaskKey:
          std::memcpy(header_.mask, head_ + head_len_ - 4, 4);
          stage_ = HeadStage::kByte0;
          head_len_ = 0;
          head_need_ = 1;
          state_ = State::kPayload;
          remaining_ = header_.length;
          mask_phase_ = 0;
          control_len_ = 0;
          r.consumed = i;
          r.event = Event::kHeader;
          return r;
      }
      if (e != FrameError::kNone) return fail(e, i);
    }
  }

  // State::kPayload
  const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, n - i));
  if (is_control(header_.opcode)) {
    if (take) {
      std::memcpy(control_ + control_len_, p + i, take);
      unmask(control_ + control_len_, take);
      control_len_ = static_cast<uint8_t>(control_len_ + take);
      remaining_ -= take;
      i += take;
    }
    r.consumed = i;
    if (remaining_) return r;
    state_ = State::kHeader;
    r.event = Event::kControl;
    r.payload = std::string_view(control_, control_len_);
    if (header_.opcode == Opcode::kClose) {
      CloseInfo c = parse_close_payload(r.payload);
      if (c.error != FrameError::kNone) return fail(c.error, i);
      r.close_code = c.code;
      r.close_reason = c.reason;
    }
    return r;
  }

  if (take == 0 && remaining_ != 0) {
    r.consumed = i;
    return r;
  }
  char* piece = p + i;
  if (options_.defer_binary_unmask && message_opcode_ == Opcode::kBinary && !message_compressed_) {
    r.masked = true;
    r.mask_phase = mask_phase_;
    mask_phase_ = static_cast<uint8_t>((mask_phase_ + take) & 3);
  } else {
    unmask(piece, take);
  }
  remaining_ -= take;
  if (validating_) {
    size_t bad = 0;
    if (utf8_.feed(piece, take, &bad) == Utf8Validator::Status::kInvalid)
      return fail(FrameError::kInvalidUtf8, i + bad + 1);
  }
  i += take;
  r.consumed = i;
  r.event = Event::kData;
  r.payload = std::string_view(piece, take);
  if (remaining_ == 0) {
    state_ = State::kHeader;
    r.frame_end = true;
    if (header_.fin) {
      r.message_end = true;
      // A text message that stops inside a character: the verdict waits for its last byte.
      if (validating_ && utf8_.status() != Utf8Validator::Status::kValid)
        return fail(FrameError::kInvalidUtf8, i);
    }
  }
  return r;
}

CloseInfo parse_close_payload(std::string_view payload) noexcept {
  CloseInfo c;
  if (payload.empty()) return c;
  if (payload.size() == 1) {
    c.error = FrameError::kCloseTooShort;
    return c;
  }
  c.code = static_cast<uint16_t>((static_cast<uint8_t>(payload[0]) << 8) |
                                 static_cast<uint8_t>(payload[1]));
  c.reason = payload.substr(2);
  if (!close_code_valid(c.code))
    c.error = FrameError::kBadCloseCode;
  else if (!utf8_valid(c.reason))
    c.error = FrameError::kInvalidUtf8;
  return c;
}

// ---- writing ------------------------------------------------------------------------------------

FrameHead make_frame_header(Opcode opcode, uint64_t length, bool fin, bool rsv1) noexcept {
  FrameHead h;
  h.bytes[0] =
      static_cast<char>((fin ? kFin : 0) | (rsv1 ? kRsv1 : 0) | static_cast<uint8_t>(opcode));
  if (length < kLength16) {
    h.bytes[1] = static_cast<char>(length);
    h.size = 2;
  } else if (length <= 0xFFFF) {
    h.bytes[1] = static_cast<char>(kLength16);
    h.bytes[2] = static_cast<char>(length >> 8);
    h.bytes[3] = static_cast<char>(length);
    h.size = 4;
  } else {
    h.bytes[1] = static_cast<char>(kLength64);
    for (int k = 0; k < 8; ++k) h.bytes[2 + k] = static_cast<char>(length >> (56 - 8 * k));
    h.size = 10;
  }
  return h;
}

CloseFrame make_close_frame(uint16_t code, std::string_view reason) noexcept {
  CloseFrame f;
  f.bytes[0] = static_cast<char>(kFin | static_cast<uint8_t>(Opcode::kClose));
  if (code == close_code::kNoStatus) {
    f.bytes[1] = 0;
    f.size = 2;
    return f;
  }
  constexpr size_t kMaxReason = kMaxControlPayload - 2;
  if (reason.size() > kMaxReason) {
    // Cut before the character that does not fit: step back over continuation bytes to its lead.
    size_t cut = kMaxReason;
    while (cut > 0 && (static_cast<uint8_t>(reason[cut]) & 0xC0) == 0x80) --cut;
    reason = reason.substr(0, cut);
  }
  f.bytes[1] = static_cast<char>(2 + reason.size());
  f.bytes[2] = static_cast<char>(code >> 8);
  f.bytes[3] = static_cast<char>(code);
  if (!reason.empty()) std::memcpy(f.bytes + 4, reason.data(), reason.size());
  f.size = static_cast<uint8_t>(4 + reason.size());
  return f;
}

namespace {

// Eight bytes at a time: the key repeats every 4, so a word-sized XOR keeps the phase. Two
// instances, so that the compiler vectorizes each without a run-time overlap check (which
// would send the in-place case down a scalar path).
template <typename Dst>
inline void xor_mask(Dst dst, const char* src, size_t n, const uint8_t key[4], size_t phase) noexcept {
  uint8_t k[8];
  for (size_t j = 0; j < 8; ++j) k[j] = key[(phase + j) & 3];
  size_t i = 0;
  if (n >= 8) {
    uint64_t k64;
    std::memcpy(&k64, k, 8);
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, src + i, 8);
      w ^= k64;
      std::memcpy(dst + i, &w, 8);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<char>(src[i] ^ k[i & 3]);
}

}  // namespace

void apply_mask(char* p, size_t n, const uint8_t key[4], size_t phase) noexcept {
  xor_mask<char*>(p, p, n, key, phase);
}

void copy_unmasked(char* __restrict dst, const char* __restrict src, size_t n, const uint8_t key[4],
                   size_t phase) noexcept {
  xor_mask<char* __restrict>(dst, src, n, key, phase);
}

}  // namespace fulmen::ws
