// WebSocket framing (RFC 6455 section 5), server side: an incremental parser for the frames a
// client sends and a writer for the frames a server sends.
//
// Bytes in, events and views out, like the HTTP/1 parser: nothing here knows about sockets or
// Python, and nothing allocates. Data payloads are unmasked in place in the caller's buffer and
// handed out as views into it, piece by piece, so a 16 MiB message is never copied here. Control
// frames (at most 125 bytes) are gathered in the parser so the caller sees each one whole.
//
// Strict: every MUST of RFC 6455 5.1-5.5 a server can check on the frames it receives is
// checked, and each violation is a distinct FrameError that maps to the close code to fail the
// connection with (close_code_for). The verdict is reached at the first byte that makes it
// certain, and is the same whatever the split of the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/ws/utf8.hpp"

namespace fulmen::ws {

enum class Opcode : uint8_t {
  kContinuation = 0x0,
  kText = 0x1,
  kBinary = 0x2,
  kClose = 0x8,
  kPing = 0x9,
  kPong = 0xA,
};

constexpr bool is_control(Opcode op) noexcept {
  return (static_cast<uint8_t>(op) & 0x8) != 0;
}

// Close codes the server uses or checks (RFC 6455 7.4.1, IANA registry).
namespace close_code {
inline constexpr uint16_t kNormal = 1000;
inline constexpr uint16_t kGoingAway = 1001;
inline constexpr uint16_t kProtocolError = 1002;
inline constexpr uint16_t kUnsupportedData = 1003;
inline constexpr uint16_t kNoStatus = 1005;  // never on the wire: "the close frame had no code"
inline constexpr uint16_t kAbnormal = 1006;  // never on the wire: "no close frame at all"
inline constexpr uint16_t kInvalidPayload = 1007;  // e.g. a text message that is not UTF-8
inline constexpr uint16_t kPolicyViolation = 1008;
inline constexpr uint16_t kMessageTooBig = 1009;
inline constexpr uint16_t kMandatoryExtension = 1010;
inline constexpr uint16_t kInternalError = 1011;
inline constexpr uint16_t kServiceRestart = 1012;
}  // namespace close_code

// Whether `code` may appear in a close frame: 1000-1003, 1007-1014 (1012-1014 were registered
// with IANA after RFC 6455; browsers send them and Autobahn's current suite accepts them), and
// 3000-4999 (libraries, frameworks, applications). 1004 (reserved), 1005/1006/1015 (only for
// reporting, never sent) and everything else are invalid.
constexpr bool close_code_valid(uint16_t code) noexcept {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

// Stable numbers: never renumber, only append. Tests and fuzz regressions refer to them by name.
enum class FrameError : uint8_t {
  kNone = 0,
  kReservedBits = 1,            // RSV2/RSV3 set, or RSV1 without an extension that defines it
  kUnknownOpcode = 2,           // 0x3-0x7 or 0xB-0xF
  kFragmentedControl = 3,       // control frame without FIN
  kUnexpectedContinuation = 4,  // continuation frame with no fragmented message open
  kExpectedContinuation = 5,    // text/binary frame while a fragmented message is open
  kUnmasked = 6,                // client frame without the MASK bit
  kControlTooLong = 7,          // control frame payload over 125 bytes
  kLengthTopBit = 8,            // 64-bit length with the most significant bit set
  kMessageTooBig = 9,           // message (all fragments) over FrameOptions::max_message -> 1009
  kCloseTooShort = 10,          // close payload of exactly 1 byte
  kBadCloseCode = 11,           // close code not allowed on the wire (close_code_valid)
  kInvalidUtf8 = 12,            // text message or close reason not UTF-8 -> 1007
};

// The close code to fail the connection with (RFC 6455 7.4.1): 1002 unless noted above.
uint16_t close_code_for(FrameError e) noexcept;
// A short, stable, human-readable reason, short enough for a close frame. Never null.
const char* error_reason(FrameError e) noexcept;

// 16 MiB: what Uvicorn (websockets) and the issue's --ws-max-size default to.
inline constexpr uint64_t kDefaultMaxMessage = 16u << 20;
// Control frame payloads (RFC 6455 5.5).
inline constexpr size_t kMaxControlPayload = 125;

struct FrameOptions {
  // Bytes a message may have on the wire, all fragments together; 0 = no limit. Checked against
  // each frame's announced length, so an oversized message fails before its payload arrives.
  // (For compressed messages the inflated size is the inflater's business.)
  uint64_t max_message = kDefaultMaxMessage;
  // Set once permessage-deflate (RFC 7692) is negotiated: RSV1 is then allowed, and only on the
  // first frame of a data message.
  bool allow_rsv1 = false;
  // Validate text messages as they arrive (not those with RSV1: their UTF-8 is checked after
  // inflating, by the caller).
  bool validate_utf8 = true;
  // Hand out the payload of uncompressed binary messages still masked (Result::masked), so the
  // consumer can unmask it while copying it to where it goes: one pass over the bytes instead of
  // two. Text (validated here) and compressed payload are always unmasked in place.
  bool defer_binary_unmask = false;
};

struct FrameHeader {
  Opcode opcode = Opcode::kContinuation;
  bool fin = false;
  bool rsv1 = false;     // per-message compressed, when permessage-deflate is on
  uint64_t length = 0;   // payload bytes
  uint8_t mask[4] = {};  // client frames are always masked (unmasked ones are an error)
};

// Parses client frames. feed() consumes bytes and returns at most one event per call; call it
// again with the unconsumed rest, and keep calling while it returns something other than kNone:
// an event can be pending even when no input is left (the payload of an empty frame), so the
// loop is "until kNone", not "until the input is used up". kNone means all input was consumed.
//
// Per frame: kHeader, then for a data frame kData pieces (the last one has frame_end; an empty
// frame gives one empty piece), or for a control frame one kControl with the whole payload.
// After a close frame the caller should stop feeding (RFC 6455 5.5.1).
class FrameParser {
 public:
  enum class Event : uint8_t {
    kNone,     // all input consumed, nothing to report: wait for more bytes
    kHeader,   // a frame header is complete: header() describes the frame
    kData,     // a piece of a data frame's payload, unmasked in place (see Result::masked)
    kControl,  // a whole, valid control frame (close code and reason already checked)
    kError,    // the connection must be failed with close_code_for(error)
  };

  struct Result {
    size_t consumed = 0;  // bytes of the input used; on kError, up to the offending byte
    Event event = Event::kNone;
    // kData: the piece, pointing into the input; kControl: the payload, pointing into the
    // parser (valid until the next feed() or reset()).
    std::string_view payload;
    bool frame_end = false;         // kData: the piece ends the frame
    bool message_end = false;       // kData: ... and the frame had FIN: the message is complete
    uint16_t close_code = 0;        // kControl close: the code, or kNoStatus for an empty payload
    std::string_view close_reason;  // kControl close: the reason, valid UTF-8
    FrameError error = FrameError::kNone;  // kError: why
    // kData with defer_binary_unmask: the piece is still masked with header().mask, starting
    // at key byte mask_phase (apply_mask or copy_unmasked with that phase undoes it).
    bool masked = false;
    uint8_t mask_phase = 0;
  };

  FrameParser() noexcept = default;
  explicit FrameParser(const FrameOptions& options) noexcept : options_(options) {}

  // Consumes p[0..n) and unmasks data payload in place (hence not const).
  Result feed(char* p, size_t n) noexcept;

  // Back to the start of a stream (keeps the options).
  void reset() noexcept;

  // The options can change between frames, e.g. allow_rsv1 once an extension is negotiated.
  FrameOptions& options() noexcept { return options_; }
  const FrameHeader& header() const noexcept { return header_; }
  // The message the current data frame belongs to: its opcode (text/binary, also for
  // continuation frames) and whether its first frame had RSV1.
  Opcode message_opcode() const noexcept { return message_opcode_; }
  bool message_compressed() const noexcept { return message_compressed_; }
  // Bytes of the current message announced so far, all frames together.
  uint64_t message_size() const noexcept { return message_size_; }

 private:
  enum class State : uint8_t { kHeader, kPayload, kError };
  // Header bytes come in stages, each checked as soon as it is complete: the first byte, the
  // second, the extended length (if any), the masking key.
  enum class HeadStage : uint8_t { kByte0, kByte1, kExtLength, kMaskKey };

  FrameError check_first_byte(uint8_t b) noexcept;
  FrameError check_second_byte(uint8_t b) noexcept;
  FrameError check_length(uint64_t length) noexcept;
  void unmask(char* p, size_t n) noexcept;
  Result fail(FrameError e, size_t consumed) noexcept;

  FrameOptions options_;
  FrameHeader header_;
  State state_ = State::kHeader;
  HeadStage stage_ = HeadStage::kByte0;
  uint8_t head_[14] = {};  // header bytes gathered so far: the header can span reads
  uint8_t head_len_ = 0;
  uint8_t head_need_ = 1;    // header bytes needed to finish the current stage
  uint8_t mask_phase_ = 0;   // payload bytes already unmasked, mod 4
  uint8_t control_len_ = 0;  // control payload gathered so far
  uint64_t remaining_ = 0;   // payload bytes of this frame not yet handed out
  // Fragmentation state: a message is open from its first frame until its FIN frame's header.
  bool expect_continuation_ = false;
  Opcode message_opcode_ = Opcode::kText;
  bool message_compressed_ = false;
  bool validating_ = false;  // this text message is checked here (see validate_utf8)
  uint64_t message_size_ = 0;
  FrameError error_ = FrameError::kNone;  // repeated by every feed() after a failure
  Utf8Validator utf8_;
  char control_[kMaxControlPayload];  // a control frame's payload, unmasked
};

// What a close frame's payload says. For an empty payload code is kNoStatus and error kNone.
struct CloseInfo {
  uint16_t code = close_code::kNoStatus;
  std::string_view reason;  // points into the payload
  FrameError error = FrameError::kNone;
};
CloseInfo parse_close_payload(std::string_view payload) noexcept;

// ---- writing server frames (never masked, RFC 6455 5.1) ----------------------------------------

// The largest server frame header: 2 bytes plus an 8-byte length.
inline constexpr size_t kMaxServerHeader = 10;

// A frame header in a small fixed buffer, to go out with writev() in front of a payload that
// stays where it is.
struct FrameHead {
  char bytes[kMaxServerHeader];
  uint8_t size;
  std::string_view view() const noexcept { return {bytes, size}; }
};

// Encodes a header in the shortest of the three length forms (7-bit, 16-bit, 64-bit).
// `length` must be below 2^63; control frames need fin and length <= 125.
FrameHead make_frame_header(Opcode opcode, uint64_t length, bool fin = true,
                            bool rsv1 = false) noexcept;

// A whole close frame: header, code, reason. The reason (UTF-8) is cut to the 123 bytes that
// fit, at a character boundary. code kNoStatus gives an empty payload (the answer to a close
// that carried no code); otherwise the code should satisfy close_code_valid.
struct CloseFrame {
  char bytes[2 + kMaxControlPayload];
  uint8_t size;
  std::string_view view() const noexcept { return {bytes, size}; }
};
CloseFrame make_close_frame(uint16_t code, std::string_view reason = {}) noexcept;

// Applies (or removes: XOR) a masking key, starting `phase` bytes into the key. For client-side
// tools and tests; the parser unmasks by itself.
void apply_mask(char* p, size_t n, const uint8_t key[4], size_t phase = 0) noexcept;
// dst[0..n) = src[0..n) unmasked, in one pass (the buffers must not overlap).
void copy_unmasked(char* dst, const char* src, size_t n, const uint8_t key[4], size_t phase = 0) noexcept;

}  // namespace fulmen::ws
