// permessage-deflate (RFC 7692) for the WebSocket engine: negotiating the extension from the
// offers parse_upgrade() split, inflating the messages a client compressed, and compressing the
// messages the server sends.
//
// Standalone like the frame parser: bytes in, bytes out, no sockets, no Python. DEFLATE itself
// comes from zlib (raw streams, RFC 1951); this module adds the framing rules of RFC 7692 7.2
// (the 00 00 ff ff tail), the limits, and the memory policy:
//   - the server never takes over its own compression context (it always answers with
//     server_no_context_takeover, 7.1.1.1), so one Deflater per worker thread serves every
//     connection and a connection's compression memory is zero;
//   - a connection's Inflater allocates its zlib state on the first compressed message, not at
//     the handshake, and can give it back (release()) when nothing needs to be kept.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/ws/frame.hpp"
#include "core/ws/handshake.hpp"

// zlib's stream type, declared here so this header does not pull in <zlib.h>.
struct z_stream_s;

namespace fulmen::ws {

// LZ77 window sizes a peer may name (RFC 7692 7.1.2.1, 7.1.2.2): 2^8 .. 2^15 bytes.
inline constexpr uint8_t kMinWindowBits = 8;
inline constexpr uint8_t kMaxWindowBits = 15;
// The smallest client window this server asks for. 8 is legal, but zlib refuses to compress raw
// DEFLATE with a 256-byte window (zlib issue #171), so zlib-based clients (Python websockets,
// several others) fail or misbehave when told to use it; 9 costs them nothing.
inline constexpr uint8_t kMinRequestedClientWindowBits = 9;

struct DeflateConfig {  // server policy, from CLI options
  bool enabled = true;
  // The largest window we accept clients compressing with; it bounds each connection's inflate
  // memory: 2^bits bytes plus 7.1 KiB of zlib state (40072 bytes at 15, 11400 at 12, 7816 at
  // 9, measured by Inflater::memory_bytes). Below 15 it is asked for
  // in the response when the client offered client_max_window_bits; an offer without that
  // parameter cannot be limited (7.1.2.2) and is declined. Clamped to [9, 15].
  uint8_t client_max_window_bits = kMaxWindowBits;
  // Also ask clients that did not offer it not to take over their context (7.1.1.2 lets a server
  // add it unasked): each message then inflates on its own, so an idle connection needs no
  // inflate memory (Inflater::release between messages), at the price of the client's ratio.
  bool client_no_context_takeover = false;
};

struct DeflateParams {  // what was negotiated for one connection
  // Always true: the server compresses each message on its own (see the file comment).
  bool server_no_context_takeover = true;
  // The client resets its context per message; the Inflater then resets too, and may be
  // released between messages.
  bool client_no_context_takeover = false;
  // The window the server may compress with: what the client asked for, else 15.
  uint8_t server_max_window_bits = kMaxWindowBits;
  // The window the client compresses with, at most: the Inflater's window.
  uint8_t client_max_window_bits = kMaxWindowBits;
};

// The Sec-WebSocket-Extensions value of the 101 answer, in a fixed buffer. 128 bytes hold the
// longest answer negotiate_deflate can give (all four parameters, two-digit values).
inline constexpr size_t kMaxExtensionResponse = 128;
struct ExtensionResponse {
  char bytes[kMaxExtensionResponse];
  uint8_t size = 0;
  std::string_view view() const noexcept { return {bytes, size}; }
};

// Accepts the first permessage-deflate offer in hs.extensions (in the client's order of
// preference, RFC 7692 5) that is valid per RFC 7692 7.1 and acceptable under `cfg`; offers that
// are not are declined (skipped), which is not an error (7.1: "decline"). Other extensions
// (x-webkit-deflate-frame, ...) are ignored. Returns false when no offer is accepted: answer
// without the header and send nothing compressed. On true, fills `params` and `out`.
//
// An offer is declined if it has an unknown parameter, the same parameter twice, a value on
// server_no_context_takeover or client_no_context_takeover, server_max_window_bits without a
// value, or a window value that is not 8..15 written as the RFC 7692 ABNF says (no sign, no
// leading zero; a quoted value is unquoted first); or if cfg limits the client window below 15
// and the offer has no client_max_window_bits to say the client can be limited.
//
// The answer always has server_no_context_takeover (7.1.1.1); client_no_context_takeover when
// offered or cfg asks for it (7.1.1.2); server_max_window_bits=N echoing the offer's N when
// offered (7.1.2.1) and never otherwise; client_max_window_bits=M only when offered (7.1.2.2
// forbids it otherwise), M = min(offered value or 15, cfg), and left out when M is 15 and the
// offer had no value (absent means 15).
bool negotiate_deflate(const Handshake& hs, const DeflateConfig& cfg, DeflateParams* params,
                       ExtensionResponse* out) noexcept;

// Inflates the client's compressed messages on one connection (RFC 7692 7.2.2).
//
// Per compressed message (the first frame had RSV1): feed() each piece of payload as the frame
// parser hands it out (any split), then finish() at the end of the message. The inflated bytes
// are appended to a caller-owned string, which grows geometrically, so a connection that keeps
// its string reuses it and a steady stream of messages does not allocate. Uncompressed messages
// (no RSV1) do not come here.
//
// Every status other than kOk fails the connection with close_code_for(); after one the
// Inflater must be reset() (or the connection closed) before it is used again.
//
// The verdict does not depend on how the payload was split, with one exception: a client that
// refers further back than the window it agreed to (client_max_window_bits < 15) breaks the
// protocol, but zlib notices only when the match reaches past the bytes it holds, and which
// bytes those are depends on the split. Such a message either fails with kCorrupt or inflates
// to the bytes the client meant; it never inflates to different bytes. With a 15-bit window
// every match DEFLATE can express is checked exactly.
class Inflater {
 public:
  enum class Status : uint8_t {
    kOk = 0,
    kTooBig = 1,     // the inflated message passed max_message -> 1009
    kCorrupt = 2,    // not valid DEFLATE data, or more after a final block -> 1007
    kTruncated = 3,  // the message ended inside a DEFLATE block -> 1007
    kNoMemory = 4,   // zlib could not allocate its state -> 1011
  };

  // `window_bits` and `no_context_takeover` come from DeflateParams (client_*); max_message is
  // the largest inflated message in bytes, 0 for no limit.
  Inflater(uint8_t window_bits, bool no_context_takeover,
           uint64_t max_message = kDefaultMaxMessage) noexcept;
  explicit Inflater(const DeflateParams& params, uint64_t max_message = kDefaultMaxMessage) noexcept
      : Inflater(params.client_max_window_bits, params.client_no_context_takeover, max_message) {}
  ~Inflater();
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  // A piece of the current message's compressed payload. Appends what it inflates to *out.
  // Stops as soon as the message's inflated size passes max_message, however much input is
  // left: the work of one call is bounded by max_message + 1 bytes of output (a zip bomb costs
  // no more than an honest message of the largest size).
  Status feed(std::string_view piece, std::string* out) noexcept;

  // The end of the message: inflates the 00 00 ff ff tail (7.2.2), appending what is left, and
  // checks that the data ended on a block boundary. Then resets for the next message, keeping
  // the window unless client_no_context_takeover.
  Status finish(std::string* out) noexcept;

  // Drops the zlib state and its memory; the next feed() allocates afresh. Safe any time, but
  // between messages it loses the client's context: use it there only when
  // can_release_between_messages(), or when the connection ends.
  void release() noexcept;
  bool can_release_between_messages() const noexcept { return no_context_takeover_; }

  // Back to the start of a message after an error or an abandoned message (keeps the memory,
  // but forgets the context: the connection is being failed anyway).
  void reset() noexcept;

  // Inflated bytes of the current message so far.
  uint64_t message_size() const noexcept { return message_size_; }
  // Heap bytes zlib holds for this Inflater right now: counted at each allocation, not guessed.
  // 0 before the first compressed message and after release().
  size_t memory_bytes() const noexcept { return memory_; }

 private:
  Status ensure_stream() noexcept;
  Status run(const char* p, size_t n, bool tail, std::string* out) noexcept;
  bool after_final_block(std::string_view rest) noexcept;
  void end_message() noexcept;

  z_stream_s* stream_ = nullptr;  // allocated with the zlib state, on first use
  size_t memory_ = 0;             // what the counting allocator has handed to zlib
  uint64_t max_message_;
  uint64_t message_size_ = 0;
  uint8_t window_bits_;
  bool no_context_takeover_;
  bool stream_ended_ = false;  // this message's data had a final block (BFINAL=1, 7.2.3.4)
  uint8_t after_final_ = 0;    // payload bytes seen after that final block (at most one 0x00)
};

// The close code to fail the connection with for an Inflater status (kOk maps to 1000).
uint16_t close_code_for(Inflater::Status s) noexcept;
// A short, stable, human-readable reason, short enough for a close frame. Never null.
const char* error_reason(Inflater::Status s) noexcept;

// Compresses the server's messages, each on its own (server_no_context_takeover). Not
// thread-safe: one per worker thread, shared by all its connections.
//
// zlib streams are created lazily, one per window size actually used (each is reset, not
// rebuilt, between messages). A message of n bytes is compressed with the smallest window that
// loses no match on it (at most the negotiated one), so small messages use a small stream whose
// reset is cheap; a thread holds at most seven streams.
class Deflater {
 public:
  // zlib level 1: on JSON and source text it is 2.5-3x faster than the default level 6 for
  // output 10-15% larger (see the commit that added this file). Compression runs on the event
  // loop thread, where CPU is the scarce resource.
  static constexpr int kDefaultLevel = 1;
  // zlib memLevel 8 (its default) for the 15-bit window; smaller windows get a hash table to
  // match (memLevel = bits - 7), since a bigger one only spreads the few positions they hold
  // and is cleared on every reset. Measured (test MemoryIsLazyAndReleased): 262 KiB for the
  // 15-bit stream, 10 KiB for the 9-bit one, 550 KiB with all seven windows in use.
  static constexpr int kDefaultMemLevel = 8;

  explicit Deflater(int level = kDefaultLevel, int mem_level = kDefaultMemLevel) noexcept;
  ~Deflater();
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;

  // Compresses one whole message for a peer that inflates with a 2^window_bits window
  // (DeflateParams::server_max_window_bits, 8..15). On true, *out has the payload to send with
  // RSV1 appended to it: the DEFLATE data with its trailing 00 00 ff ff removed (7.2.1). On
  // false, *out is as it was and the message should go uncompressed (no RSV1), which RFC 7692
  // allows for any message: compressing would not make it smaller (this includes the empty
  // message, whose compressed form 7.2.3.6 is one byte), or zlib is out of memory.
  //
  // Window 8: zlib cannot compress raw DEFLATE with a 256-byte window, so a 512-byte one is used
  // with a full flush every 256 input bytes; zlib documents that decompression can restart after
  // a full flush, so no match reaches back past one, and no match in 256 bytes can reach back
  // more than 255.
  //
  // even_if_larger: compress every message, the empty one (0x00) and those that do not shrink
  // included. Some clients handle only compressed messages well once the extension is on (the
  // Autobahn client kosoku 0.1.0 mishandles uncompressed ones), and most servers and browsers
  // compress every message; false is for callers that prefer the smaller form.
  bool compress(std::string_view in, uint8_t window_bits, std::string* out,
                bool even_if_larger = false) noexcept;

  // Frees every zlib stream (e.g. when the worker goes idle); the next compress() recreates one.
  void release() noexcept;
  // Heap bytes the zlib streams hold right now, counted at each allocation.
  size_t memory_bytes() const noexcept { return memory_; }

 private:
  z_stream_s* stream_for(uint8_t window_bits) noexcept;

  // Index w - 9 holds the stream for window w (window 8 uses 9's); null until first use.
  z_stream_s* streams_[kMaxWindowBits - kMinWindowBits] = {};
  size_t memory_ = 0;
  int level_;
  int mem_level_;
};

}  // namespace fulmen::ws
