// permessage-deflate (src/core/ws/deflate): negotiation against a table of offers, and both
// directions of compression checked against zlib used directly as an independent oracle. What
// the Deflater sends must inflate in a plain raw inflater held to the negotiated window; what a
// zlib-based client sends must come out of the Inflater whole, at every split of the payload.
// Payload pieces sit in exact-size buffers, so an over-read is an ASan error.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "core/ws/deflate.hpp"
#include "core/ws/handshake.hpp"
#include "http1_support.hpp"

using namespace fulmen::ws;
using fulmen::test::ExactBuffer;
using Status = Inflater::Status;

namespace {

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s.push_back(char(c));
  return s;
}

const char* status_name(Status s) {
  switch (s) {
    case Status::kOk:
      return "kOk";
    case Status::kTooBig:
      return "kTooBig";
    case Status::kCorrupt:
      return "kCorrupt";
    case Status::kTruncated:
      return "kTruncated";
    case Status::kNoMemory:
      return "kNoMemory";
  }
  return "?";
}

// ---- negotiation ----------------------------------------------------------------------------------

constexpr const char* kDeclined = "<declined>";

// The answer to a request carrying one Sec-WebSocket-Extensions field per element of `fields`,
// or kDeclined. The request goes through parse_upgrade, as the connection code will do.
std::string negotiate(const std::vector<std::string>& fields, const DeflateConfig& cfg = {},
                      DeflateParams* params = nullptr) {
  std::vector<fulmen::http1::Header> hs = {
      {"Upgrade", "websocket"},
      {"Connection", "Upgrade"},
      {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="},
      {"Sec-WebSocket-Version", "13"},
  };
  for (const std::string& f : fields) hs.push_back({"Sec-WebSocket-Extensions", f});
  Handshake h;
  EXPECT_EQ(parse_upgrade(hs.data(), hs.size(), h), HandshakeError::kNone);
  ExtensionResponse r;
  DeflateParams p;
  if (!negotiate_deflate(h, cfg, &p, &r)) return kDeclined;
  if (params) *params = p;
  return std::string(r.view());
}

constexpr const char* kBase = "permessage-deflate; server_no_context_takeover";

TEST(WsDeflateNegotiation, OfferTable) {
  const std::string base = kBase;
  const std::pair<std::string, std::string> table[] = {
      // What browsers send (Chrome, Firefox, Safari): valueless client_max_window_bits.
      {"permessage-deflate; client_max_window_bits", base},
      {"permessage-deflate", base},
      // Each parameter alone.
      {"permessage-deflate; server_no_context_takeover", base},
      {"permessage-deflate; client_no_context_takeover", base + "; client_no_context_takeover"},
      {"permessage-deflate; server_max_window_bits=10", base + "; server_max_window_bits=10"},
      {"permessage-deflate; server_max_window_bits=8", base + "; server_max_window_bits=8"},
      {"permessage-deflate; server_max_window_bits=15", base + "; server_max_window_bits=15"},
      {"permessage-deflate; client_max_window_bits=10", base + "; client_max_window_bits=10"},
      {"permessage-deflate; client_max_window_bits=8", base + "; client_max_window_bits=8"},
      {"permessage-deflate; client_max_window_bits=15", base + "; client_max_window_bits=15"},
      // All four, in a different order than the answer uses.
      {"permessage-deflate; client_max_window_bits=12; server_max_window_bits=9; "
       "client_no_context_takeover; server_no_context_takeover",
       base + "; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=12"},
      // Quoted values are unquoted (and unescaped) first (7.1.2.1); OWS around ';' and '='.
      {"permessage-deflate; client_max_window_bits=\"10\"", base + "; client_max_window_bits=10"},
      {"permessage-deflate; server_max_window_bits=\"1\\1\"", base + "; server_max_window_bits=11"},
      {"permessage-deflate ;server_max_window_bits = 12 ", base + "; server_max_window_bits=12"},
      // Values outside 8..15 or not in the RFC's form.
      {"permessage-deflate; server_max_window_bits=7", kDeclined},
      {"permessage-deflate; server_max_window_bits=16", kDeclined},
      {"permessage-deflate; server_max_window_bits=0", kDeclined},
      {"permessage-deflate; server_max_window_bits=08", kDeclined},
      {"permessage-deflate; server_max_window_bits=010", kDeclined},
      {"permessage-deflate; server_max_window_bits=+9", kDeclined},
      {"permessage-deflate; server_max_window_bits=9a", kDeclined},
      {"permessage-deflate; server_max_window_bits=1e1", kDeclined},
      {"permessage-deflate; server_max_window_bits=\"\\1\\0\\0\"", kDeclined},
      {"permessage-deflate; client_max_window_bits=7", kDeclined},
      {"permessage-deflate; client_max_window_bits=16", kDeclined},
      {"permessage-deflate; client_max_window_bits=09", kDeclined},
      {"permessage-deflate; client_max_window_bits=\"x\"", kDeclined},
      // server_max_window_bits needs a value in an offer; the takeover parameters have none.
      {"permessage-deflate; server_max_window_bits", kDeclined},
      {"permessage-deflate; server_no_context_takeover=1", kDeclined},
      {"permessage-deflate; client_no_context_takeover=\"x\"", kDeclined},
      // Each parameter twice, even with the same value.
      {"permessage-deflate; server_no_context_takeover; server_no_context_takeover", kDeclined},
      {"permessage-deflate; client_no_context_takeover; client_no_context_takeover", kDeclined},
      {"permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", kDeclined},
      {"permessage-deflate; client_max_window_bits; client_max_window_bits", kDeclined},
      {"permessage-deflate; client_max_window_bits; client_max_window_bits=10", kDeclined},
      // Unknown parameters, including a known one in other case (names are case-sensitive).
      {"permessage-deflate; foo", kDeclined},
      {"permessage-deflate; client_max_window_bits; mux=1", kDeclined},
      {"permessage-deflate; Server_No_Context_Takeover", kDeclined},
      // Other extensions are not ours to answer.
      {"x-webkit-deflate-frame", kDeclined},
      {"deflate-frame; no_context_takeover", kDeclined},
      {"Permessage-Deflate", kDeclined},
      // Several offers: the first acceptable one wins, invalid ones are skipped.
      {"permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits",
       base},
      {"permessage-deflate; foo, permessage-deflate; server_max_window_bits=12",
       base + "; server_max_window_bits=12"},
      {"permessage-deflate; server_max_window_bits=10, permessage-deflate",
       base + "; server_max_window_bits=10"},
      {"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=11",
       base + "; client_max_window_bits=11"},
      // Autobahn 13.7: a list of offers, the first with an 8-bit server window.
      {"permessage-deflate; server_no_context_takeover; server_max_window_bits=8, "
       "permessage-deflate; server_no_context_takeover, permessage-deflate",
       base + "; server_max_window_bits=8"},
      {"permessage-deflate; foo, permessage-deflate; bar", kDeclined},
  };
  for (const auto& [offer, want] : table) EXPECT_EQ(negotiate({offer}), want) << offer;
  // Offers spread over several header fields are taken in order.
  EXPECT_EQ(negotiate({"x-foo", "permessage-deflate; client_max_window_bits=9"}),
            base + "; client_max_window_bits=9");
  EXPECT_EQ(negotiate({"permessage-deflate; bad", "permessage-deflate"}), base);
  EXPECT_EQ(negotiate({}), kDeclined);
  EXPECT_EQ(negotiate({""}), kDeclined);
}

TEST(WsDeflateNegotiation, Params) {
  DeflateParams p;
  ASSERT_EQ(negotiate({"permessage-deflate; client_max_window_bits"}, {}, &p), kBase);
  EXPECT_TRUE(p.server_no_context_takeover);
  EXPECT_FALSE(p.client_no_context_takeover);
  EXPECT_EQ(p.server_max_window_bits, 15);
  EXPECT_EQ(p.client_max_window_bits, 15);

  ASSERT_NE(negotiate({"permessage-deflate; client_no_context_takeover; "
                       "server_max_window_bits=9; client_max_window_bits=12"},
                      {}, &p),
            kDeclined);
  EXPECT_TRUE(p.server_no_context_takeover);
  EXPECT_TRUE(p.client_no_context_takeover);
  EXPECT_EQ(p.server_max_window_bits, 9);
  EXPECT_EQ(p.client_max_window_bits, 12);
}

TEST(WsDeflateNegotiation, ServerPolicy) {
  const std::string base = kBase;
  DeflateConfig off;
  off.enabled = false;
  EXPECT_EQ(negotiate({"permessage-deflate"}, off), kDeclined);

  // A client window limit is asked for when the client said it can be limited, and the offer
  // is declined when it did not (absent client_max_window_bits means a 32 KiB window).
  DeflateConfig ten;
  ten.client_max_window_bits = 10;
  DeflateParams p;
  EXPECT_EQ(negotiate({"permessage-deflate"}, ten), kDeclined);
  EXPECT_EQ(negotiate({"permessage-deflate; client_max_window_bits"}, ten, &p),
            base + "; client_max_window_bits=10");
  EXPECT_EQ(p.client_max_window_bits, 10);
  EXPECT_EQ(negotiate({"permessage-deflate; client_max_window_bits=12"}, ten, &p),
            base + "; client_max_window_bits=10");
  EXPECT_EQ(p.client_max_window_bits, 10);
  EXPECT_EQ(negotiate({"permessage-deflate; client_max_window_bits=9"}, ten, &p),
            base + "; client_max_window_bits=9");
  EXPECT_EQ(p.client_max_window_bits, 9);
  EXPECT_EQ(negotiate({"permessage-deflate, permessage-deflate; client_max_window_bits"}, ten),
            base + "; client_max_window_bits=10");

  // The policy is clamped to [9, 15]: never ask a client for the 8-bit window zlib cannot do.
  DeflateConfig eight;
  eight.client_max_window_bits = 8;
  EXPECT_EQ(negotiate({"permessage-deflate; client_max_window_bits"}, eight, &p),
            base + "; client_max_window_bits=9");
  EXPECT_EQ(p.client_max_window_bits, 9);
  // ... but a client that asks for 8 itself gets it: it knows what it can do.
  EXPECT_EQ(negotiate({"permessage-deflate; client_max_window_bits=8"}, eight, &p),
            base + "; client_max_window_bits=8");
  DeflateConfig big;
  big.client_max_window_bits = 20;
  EXPECT_EQ(negotiate({"permessage-deflate"}, big), base);

  // Asking clients not to take over their context, unasked (7.1.1.2).
  DeflateConfig nct;
  nct.client_no_context_takeover = true;
  EXPECT_EQ(negotiate({"permessage-deflate"}, nct, &p), base + "; client_no_context_takeover");
  EXPECT_TRUE(p.client_no_context_takeover);
}

TEST(WsDeflateNegotiation, LongestAnswerFits) {
  DeflateConfig cfg;
  cfg.client_no_context_takeover = true;
  const std::string r = negotiate({"permessage-deflate; server_no_context_takeover; "
                                   "client_no_context_takeover; server_max_window_bits=15; "
                                   "client_max_window_bits=15"},
                                  cfg);
  EXPECT_EQ(r, std::string(kBase) +
                   "; client_no_context_takeover; server_max_window_bits=15; "
                   "client_max_window_bits=15");
  EXPECT_EQ(r.size(), kMaxExtensionResponse);
}

// ---- zlib as the oracle ---------------------------------------------------------------------------

const std::string kTailBytes = bytes({0x00, 0x00, 0xff, 0xff});

// Inflates one server message (payload + the 7.2.2 tail) with a fresh raw inflater whose window
// is 2^window_bits, one output byte per call. zlib checks match distances against its window
// only for bytes outside the current output buffer; with a one-byte buffer that is every match,
// so a match reaching back further than the window fails here, as it would in a client that
// really kept only that window.
bool oracle_inflate(const std::string& payload, int window_bits, std::string* out) {
  z_stream z{};
  if (inflateInit2(&z, -window_bits) != Z_OK) return false;
  std::string in = payload + kTailBytes;
  z.next_in = reinterpret_cast<Bytef*>(in.data());
  z.avail_in = uInt(in.size());
  out->clear();
  bool ok = true;
  while (z.avail_in > 0) {
    unsigned char c;
    z.next_out = &c;
    z.avail_out = 1;
    const int rc = inflate(&z, Z_SYNC_FLUSH);
    if (z.avail_out == 0) out->push_back(char(c));
    if (rc == Z_STREAM_END) break;
    if (rc != Z_OK && !(rc == Z_BUF_ERROR && z.avail_out == 1 && z.avail_in == 0)) {
      ok = false;
      break;
    }
  }
  inflateEnd(&z);
  return ok;
}

// A zlib-based client: raw DEFLATE with a sync flush per message and the tail removed (7.2.1),
// keeping its window across messages unless told not to.
class ZlibClient {
 public:
  explicit ZlibClient(int window_bits, bool no_context_takeover = false, int level = 6)
      : no_context_takeover_(no_context_takeover) {
    EXPECT_EQ(deflateInit2(&z_, level, Z_DEFLATED, -window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  }
  ~ZlibClient() { deflateEnd(&z_); }

  std::string message(const std::string& in) {
    std::string out(deflateBound(&z_, in.size()) + 16, '\0');
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = uInt(in.size());
    z_.next_out = reinterpret_cast<Bytef*>(out.data());
    z_.avail_out = uInt(out.size());
    EXPECT_EQ(deflate(&z_, Z_SYNC_FLUSH), Z_OK);
    EXPECT_GT(z_.avail_out, 0u);
    out.resize(out.size() - z_.avail_out);
    EXPECT_EQ(out.substr(out.size() - 4), kTailBytes);
    out.resize(out.size() - 4);
    if (no_context_takeover_) deflateReset(&z_);
    return out;
  }

 private:
  z_stream z_{};
  bool no_context_takeover_;
};

struct Inflated {
  Status status = Status::kOk;
  std::string data;
};

// Feeds `payload` in pieces ending at `cuts` (ascending, each in (0, size)), each piece in its
// own exact-size buffer, then finishes the message.
Inflated inflate_pieces(Inflater& inf, const std::string& payload,
                        const std::vector<size_t>& cuts = {}) {
  Inflated r;
  size_t start = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(payload.size());
  for (size_t end : ends) {
    ExactBuffer b(payload.data() + start, end - start);
    r.status = inf.feed({b.p, end - start}, &r.data);
    if (r.status != Status::kOk) return r;
    start = end;
  }
  r.status = inf.finish(&r.data);
  return r;
}

// Text with structure (JSON-like records) and some variety, so it compresses the way real
// messages do and matches reach back over various distances.
std::string sample_text(size_t n, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  static const char* const words[] = {"alpha", "beta", "gamma", "delta", "user", "name",
                                      "score", "tags", "true", "false", "null", "items"};
  std::string s;
  while (s.size() < n) {
    s += "{\"id\":" + std::to_string(rng() % 100000) + ",\"" + words[rng() % 12] + "\":\"" +
         words[rng() % 12] + std::to_string(rng() % 1000) + "\"},";
  }
  s.resize(n);
  return s;
}

std::string random_bytes(size_t n, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = char(rng());
  return s;
}

// ---- Inflater ------------------------------------------------------------------------------------

// The payloads of RFC 7692 7.2.3, each meaning "Hello".
TEST(WsInflater, Rfc7692Examples) {
  const std::string hello = "Hello";
  const std::pair<const char*, std::string> examples[] = {
      {"7.2.3.1 one compressed block", bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00})},
      {"7.2.3.3 no compression",
       bytes({0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00})},
      {"7.2.3.4 BFINAL set", bytes({0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00})},
      {"7.2.3.5 two blocks", bytes({0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9,
                                    0xc9, 0x07, 0x00})},
  };
  for (const auto& [name, payload] : examples) {
    for (size_t cut = 0; cut < payload.size(); ++cut) {
      Inflater inf(15, false);
      const Inflated r = inflate_pieces(inf, payload, cut ? std::vector<size_t>{cut} : std::vector<size_t>{});
      EXPECT_EQ(status_name(r.status), std::string("kOk")) << name << " cut " << cut;
      EXPECT_EQ(r.data, hello) << name << " cut " << cut;
    }
  }
  // 7.2.3.6: an empty message is one 0x00 byte.
  Inflater inf(15, false);
  const Inflated empty = inflate_pieces(inf, bytes({0x00}));
  EXPECT_EQ(empty.status, Status::kOk);
  EXPECT_EQ(empty.data, "");
}

// 7.2.3.2: the second "Hello" refers back to the first; only a kept window can inflate it.
TEST(WsInflater, Rfc7692SharedWindow) {
  const std::string first = bytes({0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00});
  const std::string second = bytes({0xf2, 0x00, 0x11, 0x00, 0x00});
  Inflater keeps(15, false);
  EXPECT_EQ(inflate_pieces(keeps, first).data, "Hello");
  const Inflated r = inflate_pieces(keeps, second);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.data, "Hello");
  // With client_no_context_takeover the window is emptied after each message, so the same
  // back-reference now points before the start: corrupt.
  Inflater resets(15, true);
  EXPECT_EQ(inflate_pieces(resets, first).data, "Hello");
  EXPECT_EQ(status_name(inflate_pieces(resets, second).status), std::string("kCorrupt"));
}

// A final block (7.2.3.4) ends zlib's stream, but a client with context takeover still compresses
// its next message against the window: it must be carried over.
TEST(WsInflater, FinalBlockKeepsTheWindow) {
  const std::string final_hello = bytes({0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00});
  const std::string back_ref = bytes({0xf2, 0x00, 0x11, 0x00, 0x00});
  Inflater inf(15, false);
  EXPECT_EQ(inflate_pieces(inf, final_hello).data, "Hello");
  Inflated r = inflate_pieces(inf, back_ref);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.data, "Hello");
  // Also without the 0x00 the RFC's example carries after the final block.
  EXPECT_EQ(inflate_pieces(inf, final_hello.substr(0, 7)).data, "Hello");
  r = inflate_pieces(inf, back_ref);
  EXPECT_EQ(r.status, Status::kOk);
  EXPECT_EQ(r.data, "Hello");
}

TEST(WsInflater, ClientMessageAtEverySplit) {
  const std::string text = "{\"type\":\"chat\",\"text\":\"hello hello hello\",\"to\":\"chat\"}";
  ZlibClient client(15, true);
  const std::string payload = client.message(text);
  ASSERT_LT(payload.size(), text.size());
  const size_t n = payload.size();
  Inflater inf(15, true);
  // Whole, every two-way and every three-way split, byte by byte.
  std::vector<std::vector<size_t>> splits = {{}};
  for (size_t a = 1; a < n; ++a) {
    splits.push_back({a});
    for (size_t b = a + 1; b < n; ++b) splits.push_back({a, b});
  }
  std::vector<size_t> every;
  for (size_t a = 1; a < n; ++a) every.push_back(a);
  splits.push_back(every);
  for (const auto& cuts : splits) {
    const Inflated r = inflate_pieces(inf, payload, cuts);
    ASSERT_EQ(r.status, Status::kOk) << ::testing::PrintToString(cuts);
    ASSERT_EQ(r.data, text) << ::testing::PrintToString(cuts);
  }
}

TEST(WsInflater, ContextTakeoverAcrossMessages) {
  const std::string m1 = sample_text(3000, 1);
  const std::string m2 = m1.substr(0, 2000) + sample_text(500, 2);
  const std::string m3 = m1;
  ZlibClient client(15);
  const std::string p1 = client.message(m1), p2 = client.message(m2), p3 = client.message(m3);
  // The client really used its window: a repeat of a message is a dozen 258-byte matches.
  EXPECT_LT(p3.size(), 60u);
  EXPECT_GT(p1.size(), 500u);
  Inflater inf(15, false);
  std::mt19937 rng(3);
  for (const auto& [payload, want] :
       {std::pair{p1, m1}, std::pair{p2, m2}, std::pair{p3, m3}}) {
    std::vector<size_t> cuts;  // random splits, as reads would cut them
    for (size_t at = 1 + rng() % 50; at < payload.size(); at += 1 + rng() % 200) cuts.push_back(at);
    const Inflated r = inflate_pieces(inf, payload, cuts);
    ASSERT_EQ(r.status, Status::kOk);
    EXPECT_EQ(r.data, want);
  }
  // An Inflater that wrongly resets cannot follow: the third message is back-references only.
  Inflater resets(15, true);
  EXPECT_EQ(inflate_pieces(resets, p1).data, m1);
  EXPECT_NE(inflate_pieces(resets, p2).status, Status::kOk);
}

TEST(WsInflater, NoContextTakeoverResetsPerMessage) {
  ZlibClient client(15, true);
  Inflater inf(15, true);
  for (uint32_t k = 0; k < 5; ++k) {
    const std::string m = sample_text(2000 + k * 100, 10 + k % 2);  // repeats across messages
    const Inflated r = inflate_pieces(inf, client.message(m));
    ASSERT_EQ(r.status, Status::kOk);
    EXPECT_EQ(r.data, m);
  }
  EXPECT_TRUE(inf.can_release_between_messages());
  // Released between messages: the next one allocates afresh and inflates the same.
  inf.release();
  EXPECT_EQ(inf.memory_bytes(), 0u);
  const std::string m = sample_text(1000, 11);
  EXPECT_EQ(inflate_pieces(inf, client.message(m)).data, m);
}

// Every client window: matches reach back as far as the window allows.
TEST(WsInflater, ClientWindows8To15) {
  for (int w = 8; w <= 15; ++w) {
    // zlib cannot compress with an 8-bit window; 9 on a message shorter than 256 bytes, reset
    // after each message, never reaches back further than 256.
    const size_t window = size_t(1) << w;
    // The repeat starts window - 272 bytes after the original: as far back as zlib reaches
    // with that window (it keeps 262 bytes of lookahead).
    const std::string chunk = sample_text(w == 8 ? 100 : std::min<size_t>(window / 4, 2000));
    const std::string m = w == 8 ? chunk + chunk.substr(0, 100)
                                 : chunk + random_bytes(window - chunk.size() - 272) + chunk;
    Inflater inf(uint8_t(w), false);
    ZlibClient client(w == 8 ? 9 : w, w == 8);
    for (int rep = 0; rep < 3; ++rep) {  // later messages reuse the window
      const Inflated r = inflate_pieces(inf, client.message(m));
      ASSERT_EQ(r.status, Status::kOk) << "window " << w << " message " << rep;
      ASSERT_EQ(r.data, m) << "window " << w << " message " << rep;
    }
  }
}

// max_message is the largest inflated message: N passes, N + 1 fails, whatever the split.
TEST(WsInflater, MaxMessageAtNAndNPlusOne) {
  for (size_t n : {size_t(1), size_t(100), size_t(1024), size_t(70000)}) {
    const std::string at = sample_text(n, 5), over = sample_text(n + 1, 5);
    ZlibClient client(15, true);
    const std::string p_at = client.message(at), p_over = client.message(over);
    Inflater inf(15, true, n);
    Inflated r = inflate_pieces(inf, p_at);
    EXPECT_EQ(r.status, Status::kOk) << n;
    EXPECT_EQ(r.data, at);
    r = inflate_pieces(inf, p_over);
    EXPECT_EQ(r.status, Status::kTooBig) << n;
    EXPECT_EQ(r.data.size(), n + 1) << "stops one byte past the limit";
    // Split byte by byte for the small ones (the limit is passed in some later piece).
    if (p_over.size() < 600) {
      std::vector<size_t> every;
      for (size_t a = 1; a < p_over.size(); ++a) every.push_back(a);
      inf.reset();
      r = inflate_pieces(inf, p_at, {});
      EXPECT_EQ(r.status, Status::kOk);
      r = inflate_pieces(inf, p_over, every);
      EXPECT_EQ(r.status, Status::kTooBig) << n;
    }
    inf.reset();
    EXPECT_EQ(inflate_pieces(inf, p_at).data, at) << "usable again after reset()";
  }
  // 0 means no limit.
  ZlibClient client(15, true);
  const std::string big = sample_text(1 << 20, 6);
  Inflater unlimited(15, true, 0);
  EXPECT_EQ(inflate_pieces(unlimited, client.message(big)).data, big);
}

// 10 MiB of zeros compress to about 10 KB; the Inflater stops one byte past its limit, in the
// piece where it gets there, without inflating the rest.
TEST(WsInflater, ZipBombStopsAtTheLimit) {
  ZlibClient client(15, true, 9);
  const std::string bomb = client.message(std::string(10 << 20, '\0'));
  ASSERT_LT(bomb.size(), 20000u);
  constexpr uint64_t kLimit = 1 << 20;
  Inflater inf(15, true, kLimit);
  std::string out;
  Status s = Status::kOk;
  size_t fed = 0;
  for (; fed < bomb.size() && s == Status::kOk; fed += 1000) {
    s = inf.feed(std::string_view(bomb).substr(fed, 1000), &out);
  }
  EXPECT_EQ(status_name(s), std::string("kTooBig"));
  EXPECT_EQ(out.size(), kLimit + 1);
  EXPECT_LT(fed, bomb.size() / 4) << "the rest of the bomb was never fed";
  EXPECT_EQ(close_code_for(s), 1009);
  // Whole in one piece: the same.
  inf.reset();
  out.clear();
  EXPECT_EQ(inf.feed(bomb, &out), Status::kTooBig);
  EXPECT_EQ(out.size(), kLimit + 1);
}

TEST(WsInflater, CorruptAndTruncated) {
  ZlibClient client(15, true);
  const std::string good = client.message(sample_text(5000, 8));
  auto outcome = [](const std::string& payload) {
    Inflater inf(15, true);
    return std::string(status_name(inflate_pieces(inf, payload).status));
  };
  ASSERT_EQ(outcome(good), "kOk");
  // Block type 3 is reserved (RFC 1951 3.2.3).
  EXPECT_EQ(outcome(bytes({0x06})), "kCorrupt");
  EXPECT_EQ(outcome(bytes({0x07, 0x00})), "kCorrupt");
  // A stored block whose NLEN is not the complement of LEN.
  EXPECT_EQ(outcome(bytes({0x00, 0x05, 0x00, 0xfa, 0xfe, 'H', 'e', 'l', 'l', 'o', 0x00})),
            "kCorrupt");
  // A distance before the start of the (empty) window.
  EXPECT_EQ(outcome(bytes({0xf2, 0x00, 0x11, 0x00, 0x00})), "kCorrupt");
  // Random bytes are not DEFLATE (checked over many seeds: each must fail one way or another).
  for (uint32_t seed = 0; seed < 200; ++seed) {
    const std::string r = outcome(random_bytes(64, seed));
    EXPECT_TRUE(r == "kCorrupt" || r == "kTruncated") << seed << " " << r;
  }
  // Cut short inside a block. Inside a stored block the tail is taken as the block's missing
  // bytes and the data then ends mid-block; inside a Huffman block the tail decodes as codes,
  // which may or may not be invalid ones, so either failure is right there.
  EXPECT_EQ(outcome(bytes({0x00, 0x05, 0x00, 0xfa, 0xff})), "kTruncated");
  const std::string half = outcome(good.substr(0, good.size() / 2));
  EXPECT_TRUE(half == "kTruncated" || half == "kCorrupt") << half;
  // An empty payload with RSV1 is not DEFLATE data either (7.2.3.6 sends 0x00).
  EXPECT_EQ(outcome(""), "kTruncated");
  // After a final block only the one 0x00 byte of 7.2.3.4 may follow.
  const std::string final_hello = bytes({0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00});
  EXPECT_EQ(outcome(final_hello + bytes({0x00})), "kOk");
  EXPECT_EQ(outcome(final_hello + bytes({0x00, 0x00})), "kCorrupt");
  EXPECT_EQ(outcome(final_hello + bytes({0x01})), "kCorrupt");
  EXPECT_EQ(outcome(final_hello + good), "kCorrupt");
  // ... also when it comes in a later piece.
  Inflater inf(15, true);
  std::string out;
  EXPECT_EQ(inf.feed(final_hello, &out), Status::kOk);
  EXPECT_EQ(inf.feed(bytes({0x00}), &out), Status::kOk);
  EXPECT_EQ(inf.feed(bytes({0x00}), &out), Status::kCorrupt);
  // Close codes and reasons.
  EXPECT_EQ(close_code_for(Status::kCorrupt), 1007);
  EXPECT_EQ(close_code_for(Status::kTruncated), 1007);
  EXPECT_EQ(close_code_for(Status::kTooBig), 1009);
  EXPECT_EQ(close_code_for(Status::kNoMemory), 1011);
  for (int s = 0; s <= int(Status::kNoMemory); ++s) {
    EXPECT_NE(std::string(error_reason(Status(s))), "unknown error");
    EXPECT_LE(std::strlen(error_reason(Status(s))), 123u);
  }
}

// Memory is taken at the first compressed message, not before, and given back by release().
// The numbers are zlib's real allocations (state + window), printed for the docs.
TEST(WsInflater, MemoryPerWindow) {
  size_t previous = 0;
  for (int w = 8; w <= 15; ++w) {
    Inflater inf(uint8_t(w), false);
    EXPECT_EQ(inf.memory_bytes(), 0u);
    ZlibClient client(w == 8 ? 9 : w);
    EXPECT_EQ(inflate_pieces(inf, client.message("hello hello hello hello")).status, Status::kOk);
    const size_t m = inf.memory_bytes();
    std::printf("inflate window %2d: %zu bytes\n", w, m);
    EXPECT_GE(m, (size_t(1) << w)) << w;
    EXPECT_LE(m, (size_t(1) << w) + 12 * 1024) << w;
    EXPECT_GT(m, previous);
    previous = m;
    inf.release();
    EXPECT_EQ(inf.memory_bytes(), 0u);
  }
}

// ---- Deflater ------------------------------------------------------------------------------------

// What the Deflater sends for window w must inflate with a w-bit window.
TEST(WsDeflater, WindowsAndOracle) {
  Deflater d;
  for (int w = 8; w <= 15; ++w) {
    const size_t window = size_t(1) << w;
    // Repeats at distances just inside and well beyond the window: the compressor must use
    // the first and may not use the second.
    const std::string chunk = sample_text(200, uint32_t(w));
    std::string m;
    for (size_t gap : {window - 250, window + 100, 3 * window})
      m += chunk + sample_text(gap, uint32_t(gap)) + chunk;
    std::string payload;
    ASSERT_TRUE(d.compress(m, uint8_t(w), &payload)) << w;
    EXPECT_LT(payload.size(), m.size());
    std::string back;
    ASSERT_TRUE(oracle_inflate(payload, w, &back)) << "window " << w;
    EXPECT_EQ(back, m) << w;
  }
}

// The oracle itself must be able to fail, or the test above proves nothing: output compressed
// with a 32 KiB window and matches far back is refused by a smaller window.
TEST(WsDeflater, OracleRefusesMatchesBeyondItsWindow) {
  const std::string chunk = sample_text(300, 1);
  const std::string m = chunk + random_bytes(2000) + chunk;
  Deflater d;
  std::string payload, back;
  ASSERT_TRUE(d.compress(m, 15, &payload));
  EXPECT_TRUE(oracle_inflate(payload, 15, &back));
  EXPECT_EQ(back, m);
  EXPECT_FALSE(oracle_inflate(payload, 9, &back));
}

TEST(WsDeflater, Window8AtEverySize) {
  Deflater d;
  for (size_t n : {size_t(1), size_t(100), size_t(255), size_t(256), size_t(257), size_t(512),
                   size_t(1000), size_t(4096), size_t(50000)}) {
    const std::string m = sample_text(n, 3);
    std::string payload, back;
    if (!d.compress(m, 8, &payload)) {
      EXPECT_LT(n, 100u) << "only tiny messages should not shrink";
      continue;
    }
    ASSERT_TRUE(oracle_inflate(payload, 8, &back)) << n;
    EXPECT_EQ(back, m) << n;
  }
}

TEST(WsDeflater, RoundTripThroughTheInflater) {
  Deflater d;
  for (int w = 9; w <= 15; ++w) {
    Inflater inf(uint8_t(w), true);  // each server message stands alone
    for (uint32_t k = 0; k < 4; ++k) {
      const std::string m = sample_text(500 + k * 7000, k);
      std::string payload;
      ASSERT_TRUE(d.compress(m, uint8_t(w), &payload));
      const Inflated r = inflate_pieces(inf, payload);
      ASSERT_EQ(r.status, Status::kOk);
      EXPECT_EQ(r.data, m);
    }
  }
}

TEST(WsDeflater, EachMessageStandsAlone) {
  Deflater d;
  const std::string m = sample_text(5000, 4);
  std::string a, b;
  ASSERT_TRUE(d.compress(m, 15, &a));
  ASSERT_TRUE(d.compress(sample_text(3000, 5), 15, &b));
  b.clear();
  ASSERT_TRUE(d.compress(m, 15, &b));
  EXPECT_EQ(a, b) << "no context carried from one message to the next";
  // The RFC's single-block example: "Hello" at level 1 is the 7.2.3.1 payload, which is
  // longer than "Hello", so it goes uncompressed.
  std::string out = "keep";
  EXPECT_FALSE(d.compress("Hello", 15, &out));
  EXPECT_EQ(out, "keep");
}

// even_if_larger (what the connection uses: every message compressed once the extension is on):
// messages that do not shrink, and the empty one, still come out as valid permessage-deflate
// payloads that inflate back exactly, with every window.
TEST(WsDeflater, EvenIfLargerCompressesEveryMessage) {
  Deflater d;
  const std::string cases[] = {"", "a", "Hello", random_bytes(10000), random_bytes(70000),
                               sample_text(5000, 4)};
  for (int w = 8; w <= 15; ++w) {
    for (const std::string& m : cases) {
      std::string out = "prefix";
      ASSERT_TRUE(d.compress(m, uint8_t(w), &out, true)) << "window " << w << ", " << m.size() << " bytes";
      ASSERT_EQ(out.compare(0, 6, "prefix"), 0);
      std::string payload = out.substr(6);
      if (m.empty()) EXPECT_EQ(payload, std::string(1, '\0')) << "7.2.3.6";
      std::string back;
      ASSERT_TRUE(oracle_inflate(payload, w == 8 ? 9 : w, &back)) << "window " << w << ", " << m.size();
      EXPECT_TRUE(back == m) << "window " << w << ", " << m.size() << " bytes";
      // And through our own Inflater, as a client with that window would.
      Inflater inf(uint8_t(w == 8 ? 9 : w), true);
      Inflated r = inflate_pieces(inf, payload);
      ASSERT_EQ(r.status, Status::kOk);
      EXPECT_TRUE(r.data == m);
    }
  }
}

TEST(WsDeflater, UncompressedWhenItWouldNotShrink) {
  Deflater d;
  std::string out = "prefix";
  EXPECT_FALSE(d.compress("", 15, &out)) << "7.2.3.6 form is 1 byte; 0 bytes plain is shorter";
  EXPECT_FALSE(d.compress(random_bytes(10000), 15, &out));
  EXPECT_FALSE(d.compress("a", 15, &out));
  EXPECT_EQ(out, "prefix");
  // Appends after what the caller already has.
  const std::string m = sample_text(2000, 9);
  ASSERT_TRUE(d.compress(m, 12, &out));
  ASSERT_EQ(out.substr(0, 6), "prefix");
  std::string back;
  ASSERT_TRUE(oracle_inflate(out.substr(6), 12, &back));
  EXPECT_EQ(back, m);
  // Out-of-range windows are not a reason to send anything odd.
  EXPECT_FALSE(d.compress(m, 7, &back));
  EXPECT_FALSE(d.compress(m, 16, &back));
  // The smallest message that shrinks: a run of one byte.
  for (size_t n = 1; n < 16; ++n) {
    std::string p;
    if (d.compress(std::string(n, 'x'), 15, &p)) {
      EXPECT_LT(p.size(), n);
      ASSERT_TRUE(oracle_inflate(p, 15, &back));
      EXPECT_EQ(back, std::string(n, 'x'));
    }
  }
}

TEST(WsDeflater, MemoryIsLazyAndReleased) {
  Deflater d;
  EXPECT_EQ(d.memory_bytes(), 0u);
  std::string out;
  ASSERT_TRUE(d.compress(sample_text(100000, 1), 15, &out));
  const size_t one = d.memory_bytes();
  std::printf("deflate stream, window 15: %zu bytes\n", one);
  EXPECT_GT(one, 200u * 1024);  // windows, hash chains, pending buffer: about 260 KiB
  EXPECT_LT(one, 300u * 1024);
  ASSERT_TRUE(d.compress(sample_text(100000, 2), 15, &out));
  EXPECT_EQ(d.memory_bytes(), one) << "reused, not rebuilt";
  // A small message gets a small stream (its window is all the message can use).
  ASSERT_TRUE(d.compress(sample_text(200, 1), 15, &out));
  const size_t small = d.memory_bytes() - one;
  std::printf("deflate stream, window 9: %zu bytes\n", small);
  EXPECT_LT(small, 16u * 1024);
  size_t all = 0;
  for (int w = 8; w <= 15; ++w) ASSERT_TRUE(d.compress(sample_text(size_t(1) << w, 3), uint8_t(w), &out));
  all = d.memory_bytes();
  std::printf("deflate streams, all windows: %zu bytes\n", all);
  EXPECT_LT(all, 600u * 1024);
  d.release();
  EXPECT_EQ(d.memory_bytes(), 0u);
  ASSERT_TRUE(d.compress(sample_text(5000, 1), 15, &out));
}

// Steady state: once warm, inflating and compressing messages allocates nothing (the caller's
// strings keep their capacity, zlib streams are reset rather than rebuilt).
TEST(WsDeflate, NoAllocationWhenWarm) {
  ZlibClient client(15);
  std::vector<std::string> payloads;
  std::vector<std::string> messages;
  for (uint32_t k = 0; k < 50; ++k) {
    messages.push_back(sample_text(300 + (k % 7) * 900, k % 5));
    payloads.push_back(client.message(messages.back()));
  }
  Inflater inf(15, false);
  Deflater d;
  std::string in_buf, out_buf;
  in_buf.reserve(1 << 16);
  out_buf.reserve(1 << 16);
  // Warm up every window the Deflater will pick.
  for (const std::string& m : messages) {
    out_buf.clear();
    ASSERT_TRUE(d.compress(m, 15, &out_buf));
  }
  ASSERT_EQ(inflate_pieces(inf, payloads[0]).status, Status::kOk);
  const size_t inf_mem = inf.memory_bytes(), def_mem = d.memory_bytes();

  // Through a pointer read back from memory: GCC 12 with -fsanitize=null miscompiles the null
  // check of a store to this extern thread_local (see test_ws.cpp NoAllocation), here even
  // through a plain local pointer.
  bool* volatile counting = &fulmen::test::t_count_allocs;
  fulmen::test::g_counted_allocs = 0;
  *counting = true;
  size_t ok = 0;
  for (size_t k = 1; k < payloads.size(); ++k) {
    in_buf.clear();
    const std::string_view p = payloads[k];
    const size_t half = p.size() / 2;
    ok += inf.feed(p.substr(0, half), &in_buf) == Status::kOk &&
          inf.feed(p.substr(half), &in_buf) == Status::kOk &&
          inf.finish(&in_buf) == Status::kOk && in_buf == messages[k];
    out_buf.clear();
    ok += d.compress(messages[k], 15, &out_buf);
  }
  *counting = false;
  EXPECT_EQ(fulmen::test::g_counted_allocs.load(), 0u);
  EXPECT_EQ(ok, 2 * (payloads.size() - 1));
  EXPECT_EQ(inf.memory_bytes(), inf_mem);
  EXPECT_EQ(d.memory_bytes(), def_mem);
}

}  // namespace
