// HTTP/1.1 request parser (RFC 9110 / RFC 9112), strict by default.
//
// Bytes in, views out: nothing here knows about sockets, Python or allocation. Every view returned
// points into the caller's buffer and is valid as long as those bytes stay where they are.
//
// Contract (picohttpparser style): parse_request_head() returns the number of bytes the head used
// (> 0), kIncomplete when more bytes are needed, or kError with `error` set. It may be called again
// on the same buffer with more bytes appended; `scan_from` lets it skip what it already looked at.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fulmen::http1 {

// Stable numbers: never renumber, only append. Tests and fuzz regressions refer to them by name.
enum class ParseError : uint8_t {
  kNone = 0,
  kBadMethod = 1,            // empty method or a non-tchar in it
  kBadTarget = 2,            // empty target, invalid byte, or unsupported form
  kBadVersion = 3,           // not "HTTP/" DIGIT "." DIGIT
  kUnsupportedVersion = 4,   // well-formed but not HTTP/1.0 or HTTP/1.1 -> 505
  kBadRequestLine = 5,       // wrong number of spaces, bare CR/LF, ...
  kRequestLineTooLong = 6,   // -> 414
  kBadHeaderName = 7,        // empty or non-tchar name, whitespace before the colon
  kBadHeaderValue = 8,       // NUL, bare CR, LF or other CTL in a value
  kObsFold = 9,              // a line starting with SP/HTAB (obsolete line folding)
  kTooManyHeaders = 10,      // -> 431
  kHeaderTooLarge = 11,      // one field line over the limit -> 431
  kBareLF = 12,              // line ended with LF not preceded by CR
  kBadContentLength = 13,    // not 1*DIGIT, overflow, or duplicates that differ
  kContentLengthAndTransferEncoding = 14,
  kBadTransferEncoding = 15,       // chunked not last, chunked twice, or TE in HTTP/1.0
  kUnknownTransferEncoding = 16,   // a coding we do not implement -> 501
  kMissingHost = 17,         // HTTP/1.1 request without Host
  kMultipleHost = 18,        // more than one Host field
  kBodyTooLarge = 19,        // Content-Length (or chunked total) over the limit -> 413
  kBadChunkSize = 20,        // empty, non-hex or overflowing chunk-size
  kBadChunkExtension = 21,   // malformed chunk-ext
  kBadChunkTerminator = 22,  // chunk-data not followed by CRLF
  kBadTrailer = 23,          // malformed trailer field
  kTrailerTooLarge = 24,     // trailer section over the header limits -> 431
  kHeadTooLarge = 25,        // whole head over the buffer the caller allows -> 431
};

// The HTTP status a server answers each error with (400 unless the RFCs call for another).
int error_status(ParseError e) noexcept;
// A short, stable, human-readable reason ("obs-fold in header", ...). Never null.
const char* error_reason(ParseError e) noexcept;

struct Header {
  std::string_view name;   // as received (case preserved); never empty
  std::string_view value;  // leading/trailing OWS removed; may be empty
};

// Limits, named after the Gunicorn options that set them. A value of 0 means "no limit" only for
// max_body; the others are always enforced.
struct Limits {
  size_t max_request_line = 8190;   // bytes of the request line, without CRLF (--limit-request-line)
  size_t max_fields = 100;          // header fields (--limit-request-fields)
  size_t max_field_size = 8190;     // bytes of one field line, without CRLF (--limit-request-field-size)
  uint64_t max_body = 0;            // request body bytes, 0 = unlimited (--limit-request-body)
};

enum class BodyKind : uint8_t { kNone, kLength, kChunked };

enum class Method : uint8_t { kOther, kGet, kHead, kPost, kPut, kDelete, kOptions, kPatch, kConnect, kTrace };

// One parsed request head. `headers` is storage the caller owns (capacity >= limits.max_fields);
// the parser fills headers[0..num_headers).
struct Request {
  std::string_view method;
  Method method_id = Method::kOther;
  std::string_view target;     // the request-target exactly as sent
  std::string_view scheme;     // absolute-form only: "http" / "https"; empty otherwise
  std::string_view authority;  // absolute-form only: host[:port]; empty otherwise
  std::string_view path;       // raw (not percent-decoded) path: "/" for asterisk-form is "*"
  std::string_view query;      // after '?', without it; empty if none
  uint8_t version_minor = 1;   // HTTP/1.<minor>: 0 or 1
  Header* headers = nullptr;   // caller's storage
  size_t headers_capacity = 0;
  size_t num_headers = 0;

  BodyKind body = BodyKind::kNone;
  uint64_t content_length = 0;      // valid when body == kLength
  bool keep_alive = true;           // from version and Connection tokens
  bool expect_continue = false;     // "Expect: 100-continue" (case-insensitive)
  bool upgrade = false;             // Connection: upgrade + Upgrade present (for WebSocket later)
  std::string_view host;            // the Host field value (may be empty for HTTP/1.0)
};

inline constexpr ptrdiff_t kIncomplete = -2;
inline constexpr ptrdiff_t kError = -1;

// Parses one request head from buf[0..len). On kError, *error says why. `scan_from` is an in/out
// hint: the offset up to which a previous call found no end of head; start it at 0 per request.
// max_head: total bytes the head may use (the caller's buffer budget); beyond it -> kHeadTooLarge.
// Timing of verdicts: a malformed line is refused as soon as its LF arrives, a limit as soon as
// the byte that crosses it arrives; checks over the whole head (field count, Content-Length /
// Transfer-Encoding / Host) when the head ends. Whatever the split, the outcome is the same as
// for one read of the same bytes. *scan_from is left at the start of the unfinished line.
ptrdiff_t parse_request_head(const char* buf, size_t len, const Limits& limits, Request& out,
                             ParseError* error, size_t* scan_from, size_t max_head = 65536) noexcept;

// Incremental decoder for a chunked request body (RFC 9112 section 7.1), trailers included.
// feed() consumes framing and returns at most one span of body data per call; the data view
// points into the input. Call again with the unconsumed rest. feed() returns as soon as it has a
// data span (framing after it is left for the next call), never holds bytes back, and stops right
// after the final CRLF of the trailer section.
class ChunkedDecoder {
 public:
  enum class State : uint8_t { kSize, kExt, kSizeLF, kData, kDataCR, kDataLF, kTrailer, kDone, kError };

  struct Result {
    size_t consumed = 0;       // bytes of input used, framing and data together
    std::string_view data;     // body bytes found (may be empty)
    bool done = false;         // last chunk and trailers consumed; consumed stops right after
    ParseError error = ParseError::kNone;  // set when the body is malformed: stop reading
  };

  explicit ChunkedDecoder(const Limits& limits) noexcept : limits_(&limits) {}
  void reset() noexcept;
  Result feed(const char* p, size_t n) noexcept;
  State state() const noexcept { return state_; }
  uint64_t total() const noexcept { return total_; }  // body bytes delivered so far

 private:
  const Limits* limits_;        // borrowed from the server config; outlives the decoder
  State state_ = State::kSize;
  uint64_t remaining_ = 0;      // bytes left in the current chunk
  uint64_t total_ = 0;          // for max_body
  uint32_t size_digits_ = 0;    // hex digits seen in this chunk-size (overflow guard)
  uint32_t line_bytes_ = 0;     // bytes in the current size/ext/trailer line (limit guard)
  uint32_t trailer_fields_ = 0; // trailer count (limit guard)
  bool last_chunk_ = false;     // chunk-size was 0
  // Small state for validating a trailer line incrementally without buffering it.
  uint8_t trailer_phase_ = 0;
  uint8_t ext_phase_ = 0;
  ParseError error_ = ParseError::kNone;  // repeated by every feed() after a failure
};

}  // namespace fulmen::http1
