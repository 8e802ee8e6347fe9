// permessage-deflate (RFC 7692): negotiation (section 7.1), and the message transforms of 7.2
// on top of zlib's raw DEFLATE streams.
//
// zlib allocates through a counting allocator, so memory_bytes() reports what is really held,
// and the numbers in the docs and tests are measured rather than taken from zlib's formulas.
#include "core/ws/deflate.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>

namespace fulmen::ws {

namespace {

constexpr std::string_view kExtensionName = "permessage-deflate";
// Appended to a compressed message before inflating it, and removed from a compressed message
// before sending it (7.2.1, 7.2.2): the end of the empty stored block a sync flush emits.
constexpr char kTail[4] = {'\x00', '\x00', '\xff', '\xff'};

// ---- the counting allocator ---------------------------------------------------------------------

// Each block carries its size in front, since zfree is not told it. 16 bytes keep the block
// as aligned as malloc's.
constexpr size_t kAllocHeader = 16;

voidpf counted_alloc(voidpf opaque, uInt items, uInt size) {
  const size_t n = size_t(items) * size + kAllocHeader;  // two 32-bit factors: no overflow
  auto* p = static_cast<char*>(std::malloc(n));
  if (!p) return Z_NULL;
  std::memcpy(p, &n, sizeof n);
  *static_cast<size_t*>(opaque) += n;
  return p + kAllocHeader;
}

void counted_free(voidpf opaque, voidpf address) {
  char* p = static_cast<char*>(address) - kAllocHeader;
  size_t n;
  std::memcpy(&n, p, sizeof n);
  *static_cast<size_t*>(opaque) -= n;
  std::free(p);
}

// A zeroed z_stream wired to the counting allocator; the z_stream itself is counted too.
z_stream* new_stream(size_t* memory) noexcept {
  auto* z = static_cast<z_stream*>(std::calloc(1, sizeof(z_stream)));
  if (!z) return nullptr;
  z->zalloc = counted_alloc;
  z->zfree = counted_free;
  z->opaque = memory;
  *memory += sizeof(z_stream);
  return z;
}

void free_stream(z_stream* z, size_t* memory) noexcept {
  std::free(z);
  *memory -= sizeof(z_stream);
}

// ---- negotiation --------------------------------------------------------------------------------

// A window value per the ABNF of 7.1.2.1: "8".."9" or "10".."15", nothing else (no sign, no
// leading zero, no spaces). A quoted value is checked after unescaping (7.1.2.1, last
// paragraph); parse_upgrade already checked the quoted-pair syntax.
bool parse_window_bits(const ExtensionParam& p, uint8_t* bits) noexcept {
  char v[3];
  size_t n = 0;
  for (size_t i = 0; i < p.value.size(); ++i) {
    char c = p.value[i];
    if (p.escaped && c == '\\' && i + 1 < p.value.size()) c = p.value[++i];
    if (n == sizeof v) return false;
    v[n++] = c;
  }
  if (n == 1 && (v[0] == '8' || v[0] == '9')) {
    *bits = uint8_t(v[0] - '0');
    return true;
  }
  if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5') {
    *bits = uint8_t(10 + (v[1] - '0'));
    return true;
  }
  return false;
}

// What one offer asks for, once it is known to be valid.
struct Offer {
  bool server_no_context_takeover = false;
  bool client_no_context_takeover = false;
  uint8_t server_max_window_bits = 0;  // 0: absent
  bool client_max_window_bits = false;  // present, with or without a value
  uint8_t client_max_window_bits_value = 0;  // 0: present without a value
};

// The checks of 7.1 (each parameter at most once; the two takeover parameters have no value;
// the window parameters have valid values; nothing else) for one offer.
bool parse_offer(const Handshake& hs, const ExtensionOffer& offer, Offer* o) noexcept {
  bool seen_cmwb = false;
  for (size_t k = offer.first_param; k < size_t(offer.first_param) + offer.num_params; ++k) {
    const ExtensionParam& p = hs.params[k];
    if (p.name == "server_no_context_takeover") {
      if (o->server_no_context_takeover || p.has_value) return false;
      o->server_no_context_takeover = true;
    } else if (p.name == "client_no_context_takeover") {
      if (o->client_no_context_takeover || p.has_value) return false;
      o->client_no_context_takeover = true;
    } else if (p.name == "server_max_window_bits") {
      // 7.1.2.1: the value is required in an offer.
      if (o->server_max_window_bits || !parse_window_bits(p, &o->server_max_window_bits))
        return false;
    } else if (p.name == "client_max_window_bits") {
      // 7.1.2.2: the value is optional; without one the client only says it can be limited.
      if (seen_cmwb) return false;
      seen_cmwb = true;
      o->client_max_window_bits = true;
      if (p.has_value && !parse_window_bits(p, &o->client_max_window_bits_value)) return false;
    } else {
      return false;  // 7.1: an unknown parameter makes the offer one we must decline
    }
  }
  return true;
}

// Appends to the fixed response buffer; the buffer is sized for the longest answer (asserted
// below), so this cannot run out.
struct ResponseWriter {
  ExtensionResponse* r;
  void add(std::string_view s) noexcept {
    std::memcpy(r->bytes + r->size, s.data(), s.size());
    r->size = uint8_t(r->size + s.size());
  }
  void add_bits(std::string_view name, uint8_t bits) noexcept {
    add(name);
    char v[2];
    size_t n = 0;
    if (bits >= 10) v[n++] = '1';
    v[n++] = char('0' + bits % 10);
    add({v, n});
  }
};

constexpr size_t kLongestResponse =
    kExtensionName.size() + std::string_view("; server_no_context_takeover").size() +
    std::string_view("; client_no_context_takeover").size() +
    std::string_view("; server_max_window_bits=15").size() +
    std::string_view("; client_max_window_bits=15").size();
static_assert(kLongestResponse <= kMaxExtensionResponse);

// ---- deflate helpers ----------------------------------------------------------------------------

// zlib's deflate never emits a match distance above 2^w - 262 (MIN_LOOKAHEAD) with a 2^w window,
// so a message of n bytes loses no matches with the smallest w where 2^w - 262 >= n. Small
// messages then get a small stream, whose per-message reset (it clears the hash table) is cheap.
uint8_t window_for_size(size_t n, uint8_t negotiated) noexcept {
  uint8_t w = 9;
  while (w < negotiated && (size_t(1) << w) - 262 < n) ++w;
  return w;
}

// Hash table about as large as the window: a bigger one only spreads the few positions a small
// window holds. 2^(memLevel+7) two-byte entries, cleared on every deflateReset.
int mem_level_for(uint8_t window_bits, int mem_level) noexcept {
  return std::clamp(int(window_bits) - 7, 1, mem_level);
}

// Full-flush chunk for a negotiated 256-byte window (see Deflater::compress in the header).
constexpr size_t kWindow8Chunk = 256;

}  // namespace

bool negotiate_deflate(const Handshake& hs, const DeflateConfig& cfg, DeflateParams* params,
                       ExtensionResponse* out) noexcept {
  if (!cfg.enabled) return false;
  const uint8_t client_limit =
      std::clamp(cfg.client_max_window_bits, kMinRequestedClientWindowBits, kMaxWindowBits);
  for (size_t i = 0; i < hs.num_extensions; ++i) {
    const ExtensionOffer& offer = hs.extensions[i];
    if (offer.name != kExtensionName) continue;
    Offer o;
    if (!parse_offer(hs, offer, &o)) continue;
    // A client that did not offer client_max_window_bits may use a 32 KiB window and cannot be
    // told otherwise (7.1.2.2: the answer MUST NOT have the parameter): decline if that is more
    // than the policy allows.
    if (!o.client_max_window_bits && client_limit < kMaxWindowBits) continue;

    DeflateParams p;
    p.server_no_context_takeover = true;
    p.client_no_context_takeover = o.client_no_context_takeover || cfg.client_no_context_takeover;
    p.server_max_window_bits = o.server_max_window_bits ? o.server_max_window_bits : kMaxWindowBits;
    const uint8_t client_offered =
        o.client_max_window_bits_value ? o.client_max_window_bits_value : kMaxWindowBits;
    p.client_max_window_bits = std::min(client_offered, client_limit);

    out->size = 0;
    ResponseWriter w{out};
    w.add(kExtensionName);
    // 7.1.1.1: a server may add it even when not offered; it is what lets one Deflater serve a
    // whole thread.
    w.add("; server_no_context_takeover");
    // 7.1.1.2: echoed when offered (the client said it would not take over anyway, and saying
    // so lets us release the inflater between messages), or asked for by policy.
    if (p.client_no_context_takeover) w.add("; client_no_context_takeover");
    // 7.1.2.1: an offer with server_max_window_bits is accepted by answering with the same or a
    // smaller value; we compress with any window up to the one asked for, so we echo it.
    if (o.server_max_window_bits) w.add_bits("; server_max_window_bits=", p.server_max_window_bits);
    // 7.1.2.2: only when offered, and then always with a value. Stated whenever the offer named
    // a value or we limit below 15, so the client never has to infer the window.
    if (o.client_max_window_bits &&
        (o.client_max_window_bits_value || p.client_max_window_bits < kMaxWindowBits))
      w.add_bits("; client_max_window_bits=", p.client_max_window_bits);
    *params = p;
    return true;
  }
  return false;
}

// ---- Inflater -----------------------------------------------------------------------------------

Inflater::Inflater(uint8_t window_bits, bool no_context_takeover, uint64_t max_message) noexcept
    : max_message_(max_message),
      window_bits_(std::clamp(window_bits, kMinWindowBits, kMaxWindowBits)),
      no_context_takeover_(no_context_takeover) {}

Inflater::~Inflater() {
  release();
}

void Inflater::release() noexcept {
  if (stream_) {
    inflateEnd(stream_);
    free_stream(stream_, &memory_);
    stream_ = nullptr;
  }
  message_size_ = 0;
  stream_ended_ = false;
  after_final_ = 0;
}

void Inflater::reset() noexcept {
  if (stream_) inflateReset(stream_);
  message_size_ = 0;
  stream_ended_ = false;
  after_final_ = 0;
}

Inflater::Status Inflater::ensure_stream() noexcept {
  if (stream_) return Status::kOk;
  z_stream* z = new_stream(&memory_);
  if (!z) return Status::kNoMemory;
  // Negative windowBits: raw DEFLATE, no zlib header or checksum (RFC 7692 uses RFC 1951
  // data). zlib allocates the window itself only when the first output needs it.
  if (inflateInit2(z, -int(window_bits_)) != Z_OK) {
    free_stream(z, &memory_);
    return Status::kNoMemory;
  }
  stream_ = z;
  return Status::kOk;
}

// Inflates p[0..n) onto the end of *out. Output space is added in steps that start near what
// the input is likely to give and double while zlib fills them, so small pieces do not pay for
// zero-filling a large buffer and large ones need few rounds; never more than one byte past
// max_message, which is how a bomb is stopped after max_message + 1 bytes of work.
Inflater::Status Inflater::run(const char* p, size_t n, bool tail, std::string* out) noexcept {
  constexpr size_t kMinStep = 1024;
  constexpr size_t kMaxStep = 256 * 1024;
  z_stream* z = stream_;
  z->avail_in = 0;  // input left by a call that stopped early (an error) is not ours any more
  size_t step = std::clamp(n * 4, kMinStep, kMaxStep);
  for (;;) {
    if (z->avail_in == 0 && n > 0) {
      // avail_in is 32 bits; a piece can in principle be larger.
      const size_t take = std::min<size_t>(n, UINT_MAX);
      z->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(p));
      z->avail_in = uInt(take);
      p += take;
      n -= take;
    }
    size_t room = step;
    if (max_message_) {
      const uint64_t left = max_message_ - message_size_;  // message_size_ <= max_message_ here
      if (left < room) room = size_t(left) + 1;
    }
    const size_t old = out->size();
    try {
      out->resize(old + room);
    } catch (...) {
      return Status::kNoMemory;
    }
    z->next_out = reinterpret_cast<Bytef*>(out->data() + old);
    z->avail_out = uInt(room);
    // Z_BLOCK: stop at each block boundary, so that after the tail data_type can say whether
    // the data ended on one (finish()). Blocks hold thousands of symbols: few extra rounds.
    const uInt in_before = z->avail_in;
    const int rc = inflate(z, Z_BLOCK);
    const size_t produced = room - z->avail_out;
    out->resize(old + produced);
    message_size_ += produced;
    if (max_message_ && message_size_ > max_message_) return Status::kTooBig;
    switch (rc) {
      case Z_OK:
        break;
      case Z_STREAM_END: {
        // The client ended the data with a final block (7.2.3.4). zlib stops there and leaves
        // next_in just past it; what follows is checked by after_final_block().
        stream_ended_ = true;
        if (tail) return Status::kOk;
        const auto* rest = reinterpret_cast<const char*>(z->next_in);
        const size_t rest_n = z->avail_in;
        z->avail_in = 0;
        if (!after_final_block({rest, rest_n}) || !after_final_block({p, n}))
          return Status::kCorrupt;
        return Status::kOk;
      }
      case Z_BUF_ERROR:
        // No progress although output had room: fine when the input is used up; with input
        // left it cannot happen, but looping on it would never end.
        if (z->avail_in > 0 && z->avail_in == in_before) return Status::kCorrupt;
        break;
      case Z_MEM_ERROR:
        return Status::kNoMemory;
      default:  // Z_DATA_ERROR; Z_NEED_DICT and Z_STREAM_ERROR cannot happen on a raw stream
        return Status::kCorrupt;
    }
    if (z->avail_out == 0) {
      step = std::min(step * 2, kMaxStep);  // zlib may hold more: go round again
    } else if (z->avail_in == 0 && n == 0) {
      return Status::kOk;
    }
  }
}

// 7.2.3.4: a sender that flushes with a final block follows it with one 0x00 byte, the header
// of the empty stored block the tail completes, so the message inflates like any other. That
// byte is allowed (and so is its absence); anything more after a final block is not DEFLATE.
bool Inflater::after_final_block(std::string_view rest) noexcept {
  for (char c : rest) {
    if (c != '\0' || after_final_ == 1) return false;
    ++after_final_;
  }
  return true;
}

Inflater::Status Inflater::feed(std::string_view piece, std::string* out) noexcept {
  if (piece.empty()) return Status::kOk;
  if (stream_ended_) return after_final_block(piece) ? Status::kOk : Status::kCorrupt;
  if (Status s = ensure_stream(); s != Status::kOk) return s;
  return run(piece.data(), piece.size(), false, out);
}

Inflater::Status Inflater::finish(std::string* out) noexcept {
  if (!stream_ended_) {
    if (Status s = ensure_stream(); s != Status::kOk) return s;
    if (Status s = run(kTail, sizeof kTail, true, out); s != Status::kOk) return s;
    // 128 in data_type: inflate stopped at a block boundary (zlib.h, inflate()). A sender that
    // flushed (7.2.1) always ends on one, right after the empty stored block the tail closes;
    // anything else is a message cut inside a block, whose end we would silently lose.
    if (!stream_ended_ && !(stream_->data_type & 128)) return Status::kTruncated;
  }
  end_message();
  return Status::kOk;
}

void Inflater::end_message() noexcept {
  message_size_ = 0;
  if (no_context_takeover_) {
    // 7.2.2 with client_no_context_takeover: the next message starts with an empty window.
    // inflateReset keeps the memory, so this costs no allocation.
    inflateReset(stream_);
  } else if (stream_ended_) {
    // A final block ended the DEFLATE stream, but the client still compresses the next message
    // against its window (7.2.3.4): carry the window into a fresh stream. Rare (zlib-based
    // senders flush with empty stored blocks), so the copy's allocation is acceptable here.
    uInt have = 0;
    inflateGetDictionary(stream_, Z_NULL, &have);
    auto* dict = static_cast<Bytef*>(std::malloc(have ? have : 1));
    if (dict) inflateGetDictionary(stream_, dict, &have);
    inflateReset(stream_);
    // Without memory for the copy the window is lost; the next message that refers to it
    // fails as corrupt, which is the honest outcome.
    if (dict && have) inflateSetDictionary(stream_, dict, have);
    std::free(dict);
  }
  stream_ended_ = false;
  after_final_ = 0;
}

uint16_t close_code_for(Inflater::Status s) noexcept {
  switch (s) {
    case Inflater::Status::kOk:
      return close_code::kNormal;
    case Inflater::Status::kTooBig:
      return close_code::kMessageTooBig;
    // RFC 7692 8 says only "fail the WebSocket connection" for data that does not inflate;
    // 1007 (payload inconsistent with the message type) is what other servers send (e.g. the
    // Node ws library), and Autobahn's 12.x/13.x cases send only valid data, so it is not
    // checked there. 1002 would blame the framing, which was fine.
    case Inflater::Status::kCorrupt:
    case Inflater::Status::kTruncated:
      return close_code::kInvalidPayload;
    case Inflater::Status::kNoMemory:
      return close_code::kInternalError;
  }
  return close_code::kInternalError;
}

const char* error_reason(Inflater::Status s) noexcept {
  switch (s) {
    case Inflater::Status::kOk:
      return "no error";
    case Inflater::Status::kTooBig:
      return "inflated message too big";
    case Inflater::Status::kCorrupt:
      return "invalid compressed data";
    case Inflater::Status::kTruncated:
      return "compressed message ends inside a block";
    case Inflater::Status::kNoMemory:
      return "out of memory for decompression";
  }
  return "unknown error";
}

// ---- Deflater -----------------------------------------------------------------------------------

Deflater::Deflater(int level, int mem_level) noexcept
    : level_(std::clamp(level, 0, 9)), mem_level_(std::clamp(mem_level, 1, 9)) {}

Deflater::~Deflater() {
  release();
}

void Deflater::release() noexcept {
  for (z_stream*& z : streams_) {
    if (!z) continue;
    deflateEnd(z);
    free_stream(z, &memory_);
    z = nullptr;
  }
}

z_stream* Deflater::stream_for(uint8_t window_bits) noexcept {
  z_stream*& slot = streams_[window_bits - 9];
  if (slot) return slot;
  z_stream* z = new_stream(&memory_);
  if (!z) return nullptr;
  if (deflateInit2(z, level_, Z_DEFLATED, -int(window_bits), mem_level_for(window_bits, mem_level_),
                   Z_DEFAULT_STRATEGY) != Z_OK) {
    free_stream(z, &memory_);
    return nullptr;
  }
  slot = z;
  return z;
}

bool Deflater::compress(std::string_view in, uint8_t window_bits, std::string* out,
                        bool even_if_larger) noexcept {
  if (window_bits < kMinWindowBits || window_bits > kMaxWindowBits) return false;
  if (in.empty()) {
    // The empty message compresses to one byte (7.2.3.6): sent as is, it is zero.
    if (!even_if_larger) return false;
    try {
      out->push_back('\0');
    } catch (...) {
      return false;
    }
    return true;
  }
  // Room for the compressed data only while it stays smaller than the message: a message that
  // does not shrink is not worth the client's inflate, and we learn it without a second pass.
  // Past 2 GiB zlib's 32-bit counters would need chunking; such messages go as they are.
  if (in.size() > (size_t(1) << 31)) return false;
  const bool window8 = window_bits == kMinWindowBits;
  z_stream* z = stream_for(window8 ? 9 : window_for_size(in.size(), window_bits));
  if (!z) return false;
  const size_t old = out->size();
  // deflateBound() is for a finished stream; a sync flush adds its empty stored block (5 bytes),
  // and window 8 a full flush (5 bytes) per chunk.
  const size_t room = even_if_larger ? deflateBound(z, uLong(in.size())) + 16 + 5 * (in.size() / kWindow8Chunk + 1)
                                     : in.size() + sizeof kTail;
  try {
    out->resize(old + room);
  } catch (...) {
    return false;
  }
  z->next_out = reinterpret_cast<Bytef*>(out->data() + old);
  z->avail_out = uInt(room);
  z->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  bool ok = true;
  if (window8) {
    for (size_t done = 0; ok && done < in.size(); done += kWindow8Chunk) {
      const size_t take = std::min(kWindow8Chunk, in.size() - done);
      const bool last = done + take == in.size();
      z->avail_in = uInt(take);
      deflate(z, last ? Z_SYNC_FLUSH : Z_FULL_FLUSH);
      // A flush is complete only if it left output space (zlib.h, deflate()).
      ok = z->avail_in == 0 && z->avail_out > 0;
    }
  } else {
    z->avail_in = uInt(in.size());
    deflate(z, Z_SYNC_FLUSH);
    ok = z->avail_in == 0 && z->avail_out > 0;
  }
  const size_t produced = room - z->avail_out;
  // The sync flush ends with an empty stored block whose last four bytes are the tail; the
  // payload must also be smaller than the message (see above).
  ok = ok && produced >= sizeof kTail && (even_if_larger || produced - sizeof kTail < in.size()) &&
       std::memcmp(out->data() + old + produced - sizeof kTail, kTail, sizeof kTail) == 0;
  // Every message starts from an empty window (server_no_context_takeover).
  deflateReset(z);
  out->resize(ok ? old + produced - sizeof kTail : old);
  return ok;
}

}  // namespace fulmen::ws
