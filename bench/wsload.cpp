// wsload: a single-threaded epoll WebSocket load client for bench/run.py (the WebSocket suite).
//
//   wsload --port P [--host 127.0.0.1] [--path /] [-c N] [--size S] [--text|--binary]
//          [--inflight K] [--warmup W] [--duration D] [--count M] [--cpu-pids PID,PID,...]
//   wsload --port P --idle N [--hold T]
//
// Echo mode: N connections; each completes the opening handshake (101, Sec-WebSocket-Accept
// checked against SHA-1 of key + GUID; no Sec-WebSocket-Extensions is ever offered, so
// permessage-deflate is off whatever the server supports, and a server that answers with an
// extension anyway is an error), then keeps K messages of S bytes in flight: it sends a masked
// frame and sends the next one when the echo has come back whole (and equal to what was sent).
// After W seconds of warm-up it counts, for D seconds, the echoes that arrive and their round-trip
// latency. With --cpu-pids it reads utime+stime of those processes from /proc at the start and
// the end of that window, so the server's CPU time covers exactly the messages counted; its own
// CPU time over the window (CLOCK_PROCESS_CPUTIME_ID) and the machine's busy time (/proc/stat)
// come along, to tell whether the client kept up and how noisy the machine was.
// --count M instead sends M messages per connection and stops (the harness's sanity check).
//
// Idle mode: N connections, handshakes at most 256 at a time (the listen backlog is not the thing
// measured), then "READY <open>" on stdout, then held for T seconds with nothing sent (a ping from
// the server is answered); reports how many are still open. The harness samples the server's RSS
// between READY and the end.
//
// One JSON object on stdout at the end. Exit status 0 when there was no error.
// Frames are masked with one random key per connection, reused for each of its frames: the server
// unmasks every byte either way, and the frame is built once (RFC 6455 wants a fresh key per frame
// against proxy cache poisoning, which a loopback benchmark does not have).
//
// Build: g++ -O2 -std=c++20 -o build/bench/wsload bench/wsload.cpp -lcrypto (bench/run.py does).

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    std::string path = "/";
    int connections = 50;
    size_t size = 16;
    bool binary = false;
    bool binary_set = false;
    int inflight = 1;
    double warmup = 1;
    double duration = 5;
    long count = 0;  // > 0: this many messages per connection, then stop
    int idle = 0;    // > 0: idle mode with this many connections
    double hold = 10;
    double timeout = 10;  // handshake / echo stall limit, s
    int max_connecting = 256;
    std::vector<int> cpu_pids;
};

uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

double process_cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

// utime + stime of one process, in clock ticks (fields 14 and 15 of /proc/PID/stat)
long long proc_ticks(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = fopen(path, "r");
    if (!f) return 0;
    char buf[2048];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char* p = strrchr(buf, ')');
    if (!p) return 0;
    p += 2;  // field 3 (state) on
    long long v[13] = {};
    for (int i = 0; i < 13 && *p; ++i) {  // fields 3..15
        v[i] = strtoll(p, &p, 10);
        if (i == 0) {  // state is a letter
            while (*p && *p != ' ') ++p;
        }
        while (*p == ' ') ++p;
    }
    return v[11] + v[12];
}

// busy (non-idle) seconds of the whole machine, first line of /proc/stat
double machine_busy_s() {
    FILE* f = fopen("/proc/stat", "r");
    if (!f) return 0;
    unsigned long long v[8] = {};
    int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                     &v[6], &v[7]);
    fclose(f);
    if (got < 8) return 0;
    unsigned long long busy = 0;
    for (int i = 0; i < 8; ++i) busy += v[i];
    busy -= v[3] + v[4];
    return double(busy) / double(sysconf(_SC_CLK_TCK));
}

std::string base64(const unsigned char* data, size_t n) {
    static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = uint32_t(data[i]) << 16;
        if (i + 1 < n) v |= uint32_t(data[i + 1]) << 8;
        if (i + 2 < n) v |= data[i + 2];
        out += tbl[(v >> 18) & 63];
        out += tbl[(v >> 12) & 63];
        out += i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out += i + 2 < n ? tbl[v & 63] : '=';
    }
    return out;
}

std::string accept_for(const std::string& key) {
    std::string s = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char*>(s.data()), s.size(), md);
    return base64(md, sizeof md);
}

std::string json_escape(std::string_view s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            o += '\\';
            o += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char b[8];
            snprintf(b, sizeof b, "\\u%04x", c);
            o += b;
        } else {
            o += c;
        }
    }
    return o;
}

// Latency histogram: 1 µs buckets up to 10 ms, then 100 µs buckets up to 10 s.
struct Histogram {
    static constexpr size_t kFine = 10000, kCoarse = 100000;
    std::vector<uint64_t> b = std::vector<uint64_t>(kFine + kCoarse + 1);
    uint64_t n = 0;
    void add(uint64_t ns) {
        uint64_t us = ns / 1000;
        size_t i = us < kFine ? us : std::min<uint64_t>(kFine + (us - kFine) / 100, kFine + kCoarse);
        ++b[i];
        ++n;
    }
    double pct_ms(double p) const {
        if (!n) return -1;
        uint64_t want = uint64_t(p / 100.0 * double(n - 1)) + 1, acc = 0;
        for (size_t i = 0; i < b.size(); ++i) {
            acc += b[i];
            if (acc >= want) return i < kFine ? (double(i) + 0.5) / 1000.0 : (kFine + (double(i - kFine) + 0.5) * 100) / 1000.0;
        }
        return -1;
    }
};

enum class State { Connecting, Handshake, Open, Closing, Done };

struct Conn {
    int fd = -1;
    State st = State::Connecting;
    std::string key, want_accept;
    std::string hs_out;  // handshake request, unsent part
    size_t hs_off = 0;
    std::string hs_in;  // response head so far
    // outgoing data frames: `queued` more frames to send, `off` bytes of the current one already sent
    long queued = 0;
    size_t off = 0;
    std::string ctrl;  // control frames (pong, close) to send at the next frame boundary
    bool want_out = false;
    // incoming frame parser
    unsigned char hdr[14];
    size_t hdr_have = 0, hdr_need = 2;
    uint64_t payload_left = 0;
    uint8_t opcode = 0;
    bool fin = false;
    uint64_t msg_got = 0;  // bytes of the current (possibly fragmented) message so far
    uint8_t msg_op = 0;
    std::string ctl_payload;  // control frame payload being read
    bool in_control = false;
    // timing: send time of each message in flight (ring of `inflight`)
    std::vector<uint64_t> sent_at;
    size_t ring_head = 0, ring_n = 0;
    long sent = 0, echoed = 0, echoed_window = 0;
    uint64_t last_progress = 0;
    uint32_t mask = 0;
    std::vector<unsigned char> frames;  // K copies of the masked frame
    size_t frame_len = 0;
};

struct Stats {
    long handshakes = 0, handshake_failures = 0, connect_failures = 0, closed_by_server = 0, bad_echo = 0,
         protocol_errors = 0, extension_answered = 0, stalled = 0, pings = 0;
    std::string first_error;
    void error(const std::string& what) {
        if (first_error.empty()) first_error = what;
    }
};

Options opt;
Stats stats;
std::vector<Conn> conns;
std::vector<unsigned char> payload;  // what every message carries
int ep = -1;
Histogram hist;
bool in_window = false, sending = true;
std::mt19937_64 rng{std::random_device{}()};
sockaddr_in addr{};
int open_count = 0, connecting = 0, next_to_connect = 0;

void set_events(Conn& c, bool out) {
    if (c.want_out == out) return;
    c.want_out = out;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (out ? uint32_t(EPOLLOUT) : 0u);
    ev.data.u32 = uint32_t(&c - conns.data());
    epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
}

void close_conn(Conn& c, bool by_server, const std::string& why) {
    if (c.fd < 0) return;
    if (c.st == State::Handshake || c.st == State::Connecting) {
        if (c.st == State::Connecting) ++stats.connect_failures; else ++stats.handshake_failures;
        --connecting;
    } else if (c.st == State::Open || c.st == State::Closing) {
        --open_count;
        if (by_server && c.st == State::Open) ++stats.closed_by_server;
    }
    if (!why.empty()) stats.error(why);
    epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    c.fd = -1;
    c.st = State::Done;
}

// a masked client frame: FIN + opcode, MASK bit, length, key, masked payload
std::vector<unsigned char> make_frame(uint8_t op, const unsigned char* data, size_t n, uint32_t mask) {
    std::vector<unsigned char> f;
    f.push_back(0x80 | op);
    if (n < 126) {
        f.push_back(0x80 | uint8_t(n));
    } else if (n < 65536) {
        f.push_back(0x80 | 126);
        f.push_back(uint8_t(n >> 8));
        f.push_back(uint8_t(n));
    } else {
        f.push_back(0x80 | 127);
        for (int i = 7; i >= 0; --i) f.push_back(uint8_t(uint64_t(n) >> (8 * i)));
    }
    unsigned char m[4] = {uint8_t(mask >> 24), uint8_t(mask >> 16), uint8_t(mask >> 8), uint8_t(mask)};
    f.insert(f.end(), m, m + 4);
    for (size_t i = 0; i < n; ++i) f.push_back(data[i] ^ m[i & 3]);
    return f;
}

void queue_ctrl(Conn& c, uint8_t op, const std::string& body) {
    auto f = make_frame(op, reinterpret_cast<const unsigned char*>(body.data()), body.size(), c.mask);
    c.ctrl.append(reinterpret_cast<const char*>(f.data()), f.size());
}

// write what is pending: control frames at a frame boundary, then data frames (up to K per write)
void flush(Conn& c) {
    if (c.fd < 0) return;
    for (;;) {
        if (c.off == 0 && !c.ctrl.empty()) {
            ssize_t w = ::send(c.fd, c.ctrl.data(), c.ctrl.size(), MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN) break;
                close_conn(c, true, std::string("send: ") + strerror(errno));
                return;
            }
            c.ctrl.erase(0, size_t(w));
            continue;
        }
        if (c.queued == 0) break;
        long frames = std::min<long>(c.queued, opt.inflight);
        size_t len = size_t(frames) * c.frame_len - c.off;
        ssize_t w = ::send(c.fd, c.frames.data() + c.off, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) break;
            close_conn(c, true, std::string("send: ") + strerror(errno));
            return;
        }
        size_t done = c.off + size_t(w);
        c.queued -= long(done / c.frame_len);
        c.off = done % c.frame_len;
    }
    set_events(c, c.queued > 0 || !c.ctrl.empty());
}

void send_message(Conn& c, uint64_t t) {
    c.sent_at[(c.ring_head + c.ring_n) % c.sent_at.size()] = t;
    ++c.ring_n;
    ++c.queued;
    ++c.sent;
}

void start_messages(Conn& c) {
    if (opt.idle) return;
    uint64_t t = now_ns();
    c.last_progress = t;
    for (int i = 0; i < opt.inflight && (opt.count == 0 || c.sent < opt.count); ++i) send_message(c, t);
    flush(c);
}

void on_message_done(Conn& c) {
    // one whole echoed data message: check it is ours
    if (c.msg_op != (opt.binary ? 2 : 1) || c.msg_got != opt.size) {
        ++stats.bad_echo;
        close_conn(c, false, "echo of the wrong type or size: opcode " + std::to_string(c.msg_op) + ", " +
                                 std::to_string(c.msg_got) + " bytes");
        return;
    }
    if (c.ring_n == 0) {
        ++stats.protocol_errors;
        close_conn(c, false, "a message arrived that was not sent");
        return;
    }
    uint64_t t = now_ns();
    uint64_t sent = c.sent_at[c.ring_head];
    c.ring_head = (c.ring_head + 1) % c.sent_at.size();
    --c.ring_n;
    ++c.echoed;
    c.last_progress = t;
    if (in_window) {
        ++c.echoed_window;
        hist.add(t - sent);
    }
    if (sending && (opt.count == 0 || c.sent < opt.count)) send_message(c, t);
}

// feed received bytes to the frame parser; returns false if the connection was closed
bool parse(Conn& c, const unsigned char* p, size_t n) {
    if (n == 0 && c.hdr_have == c.hdr_need && c.payload_left == 0) goto frame_end;  // payload dropped by MSG_TRUNC
    while (n > 0) {
        if (c.hdr_have < c.hdr_need) {
            size_t k = std::min(n, c.hdr_need - c.hdr_have);
            memcpy(c.hdr + c.hdr_have, p, k);
            c.hdr_have += k;
            p += k;
            n -= k;
            if (c.hdr_have < c.hdr_need) return true;
            if (c.hdr_need == 2) {
                if (c.hdr[1] & 0x80) {
                    ++stats.protocol_errors;
                    close_conn(c, false, "server sent a masked frame");
                    return false;
                }
                uint8_t l = c.hdr[1] & 0x7f;
                c.hdr_need = l == 126 ? 4 : l == 127 ? 10 : 2;
                if (c.hdr_need > 2) continue;
            }
            uint64_t len = c.hdr[1] & 0x7f;
            if (len == 126) len = (uint64_t(c.hdr[2]) << 8) | c.hdr[3];
            else if (len == 127) {
                len = 0;
                for (int i = 2; i < 10; ++i) len = (len << 8) | c.hdr[i];
            }
            c.fin = c.hdr[0] & 0x80;
            c.opcode = c.hdr[0] & 0x0f;
            if (c.hdr[0] & 0x70) {
                ++stats.protocol_errors;
                close_conn(c, false, "frame with RSV bits set (an extension nobody negotiated)");
                return false;
            }
            c.payload_left = len;
            c.in_control = c.opcode >= 8;
            if (c.in_control) {
                c.ctl_payload.clear();
            } else if (c.opcode != 0) {  // first frame of a data message
                c.msg_op = c.opcode;
                c.msg_got = 0;
            }
            if (len == 0) goto frame_end;
            continue;
        }
        {
            size_t k = size_t(std::min<uint64_t>(n, c.payload_left));
            if (c.in_control) {
                c.ctl_payload.append(reinterpret_cast<const char*>(p), k);
            } else {
                if (c.msg_got + k > opt.size || memcmp(p, payload.data() + c.msg_got, k) != 0) {
                    ++stats.bad_echo;
                    close_conn(c, false, "echo differs from the message sent");
                    return false;
                }
                c.msg_got += k;
            }
            c.payload_left -= k;
            p += k;
            n -= k;
            if (c.payload_left > 0) return true;
        }
    frame_end:
        c.hdr_have = 0;
        c.hdr_need = 2;
        if (c.in_control) {
            if (c.opcode == 9) {  // ping: answer with a pong carrying the same data
                ++stats.pings;
                queue_ctrl(c, 10, c.ctl_payload);
            } else if (c.opcode == 8) {
                if (c.st == State::Closing) {
                    close_conn(c, false, "");
                } else {
                    std::string code = c.ctl_payload.size() >= 2
                                           ? std::to_string((uint8_t(c.ctl_payload[0]) << 8) | uint8_t(c.ctl_payload[1]))
                                           : std::string("none");
                    close_conn(c, true, "server sent a close frame (code " + code + ")");
                }
                return false;
            }
        } else if (c.fin) {
            on_message_done(c);
            if (c.fd < 0) return false;
        }
    }
    return true;
}

std::string lower(std::string s) {
    for (auto& ch : s) ch = char(tolower(static_cast<unsigned char>(ch)));
    return s;
}

// the 101 response: returns false if the connection was closed
bool handle_handshake(Conn& c) {
    size_t end = c.hs_in.find("\r\n\r\n");
    if (end == std::string::npos) {
        if (c.hs_in.size() > 16384) {
            close_conn(c, false, "handshake response head over 16 KiB");
            return false;
        }
        return true;
    }
    std::string head = c.hs_in.substr(0, end);
    std::string rest = c.hs_in.substr(end + 4);
    c.hs_in.clear();
    c.hs_in.shrink_to_fit();
    size_t eol = head.find("\r\n");
    std::string status = head.substr(0, eol);
    if (status.compare(0, 12, "HTTP/1.1 101") != 0) {
        close_conn(c, false, "handshake answered \"" + status + "\" instead of 101");
        return false;
    }
    std::string accept;
    bool ext = false;
    size_t pos = eol;
    while (pos != std::string::npos && pos < head.size()) {
        size_t start = pos + 2, next = head.find("\r\n", start);
        std::string line = head.substr(start, next == std::string::npos ? std::string::npos : next - start);
        size_t colon = line.find(':');
        if (colon != std::string::npos) {
            std::string name = lower(line.substr(0, colon));
            size_t v = line.find_first_not_of(" \t", colon + 1);
            std::string value = v == std::string::npos ? "" : line.substr(v);
            while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
            if (name == "sec-websocket-accept") accept = value;
            if (name == "sec-websocket-extensions") ext = true;
        }
        pos = next;
    }
    if (accept != c.want_accept) {
        close_conn(c, false, "bad Sec-WebSocket-Accept: \"" + accept + "\", want \"" + c.want_accept + "\"");
        return false;
    }
    if (ext) {
        ++stats.extension_answered;
        close_conn(c, false, "server answered with Sec-WebSocket-Extensions although none was offered");
        return false;
    }
    c.st = State::Open;
    --connecting;
    ++open_count;
    ++stats.handshakes;
    start_messages(c);
    if (c.fd < 0) return false;
    if (!rest.empty() && !parse(c, reinterpret_cast<const unsigned char*>(rest.data()), rest.size())) return false;
    flush(c);
    return c.fd >= 0;
}

void start_connect(int idx) {
    Conn& c = conns[idx];
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) {
        ++stats.connect_failures;
        stats.error(std::string("socket: ") + strerror(errno));
        c.st = State::Done;
        return;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    unsigned char raw[16];
    for (auto& b : raw) b = uint8_t(rng());
    c.key = base64(raw, sizeof raw);
    c.want_accept = accept_for(c.key);
    c.hs_out = "GET " + opt.path + " HTTP/1.1\r\nHost: " + opt.host + ":" + std::to_string(opt.port) +
               "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + c.key +
               "\r\nSec-WebSocket-Version: 13\r\n\r\n";  // no Sec-WebSocket-Extensions: no compression
    do c.mask = uint32_t(rng()); while (c.mask == 0);
    if (!opt.idle) {
        auto f = make_frame(opt.binary ? 2 : 1, payload.data(), payload.size(), c.mask);
        c.frame_len = f.size();
        c.frames.reserve(f.size() * size_t(opt.inflight));
        for (int i = 0; i < opt.inflight; ++i) c.frames.insert(c.frames.end(), f.begin(), f.end());
        c.sent_at.assign(size_t(opt.inflight), 0);
    }
    c.st = State::Connecting;
    c.last_progress = now_ns();
    ++connecting;
    epoll_event ev{};
    ev.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
    ev.data.u32 = uint32_t(idx);
    c.want_out = true;
    int r = connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (r < 0 && errno != EINPROGRESS) {
        --connecting;
        ++stats.connect_failures;
        stats.error(std::string("connect: ") + strerror(errno));
        ::close(c.fd);
        c.fd = -1;
        c.st = State::Done;
        return;
    }
    epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
}

void on_event(Conn& c, uint32_t events) {
    static std::vector<unsigned char> buf(256 * 1024);
    if (c.fd < 0) return;
    if (c.st == State::Connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            close_conn(c, false, std::string("connect: ") + strerror(err));
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN))) return;
        c.st = State::Handshake;
    }
    if (c.st == State::Handshake && c.hs_off < c.hs_out.size()) {
        ssize_t w = ::send(c.fd, c.hs_out.data() + c.hs_off, c.hs_out.size() - c.hs_off, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) {
            close_conn(c, true, std::string("send handshake: ") + strerror(errno));
            return;
        }
        if (w > 0) c.hs_off += size_t(w);
        if (c.hs_off == c.hs_out.size()) {
            c.hs_out.clear();
            c.hs_out.shrink_to_fit();
            c.want_out = true;  // force the MOD below
            set_events(c, false);
        }
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            // Large messages in the measured window: the echoed payload is dropped in the kernel
            // (MSG_TRUNC on TCP skips the copy to user space) and only the frame headers are read,
            // so the client does not pay a 64 KiB copy and compare per message. Its length is still
            // checked; its bytes were compared during the sanity check and the warm-up.
            if (in_window && opt.size >= 4096 && c.st == State::Open) {
                if (c.hdr_have == c.hdr_need && c.payload_left > 0 && !c.in_control) {
                    ssize_t r = ::recv(c.fd, nullptr, size_t(c.payload_left), MSG_TRUNC);
                    if (r > 0) {
                        c.msg_got += uint64_t(r);
                        c.payload_left -= uint64_t(r);
                        if (c.payload_left == 0 && !parse(c, nullptr, 0)) return;
                        continue;
                    }
                    if (r < 0 && errno == EAGAIN) break;
                    // EOF or an error: the plain recv below reports it
                } else {
                    ssize_t r = ::recv(c.fd, buf.data(), 14, 0);  // one header (and a few payload bytes)
                    if (r > 0) {
                        if (!parse(c, buf.data(), size_t(r))) return;
                        continue;
                    }
                    if (r < 0 && errno == EAGAIN) break;
                }
            }
            ssize_t r = ::recv(c.fd, buf.data(), buf.size(), 0);
            if (r == 0) {
                if (c.st == State::Closing) close_conn(c, false, "");
                else close_conn(c, true, c.st == State::Handshake ? "server closed the connection during the handshake"
                                                                  : "server closed the connection");
                return;
            }
            if (r < 0) {
                if (errno == EAGAIN) break;
                close_conn(c, true, std::string("recv: ") + strerror(errno));
                return;
            }
            if (c.st == State::Handshake) {
                c.hs_in.append(reinterpret_cast<const char*>(buf.data()), size_t(r));
                if (!handle_handshake(c)) return;
            } else if (!parse(c, buf.data(), size_t(r))) {
                return;
            }
            if (size_t(r) < buf.size()) break;
        }
    }
    if (c.st == State::Open || c.st == State::Closing) flush(c);
}

void connect_more() {
    while (next_to_connect < int(conns.size()) && connecting < opt.max_connecting) start_connect(next_to_connect++);
}

// run the loop until `until_ns` or until stop() says so
template <class Stop>
void loop(uint64_t until_ns, Stop stop) {
    std::vector<epoll_event> evs(1024);
    while (!stop()) {
        uint64_t t = now_ns();
        if (t >= until_ns) break;
        int ms = int(std::min<uint64_t>((until_ns - t) / 1000000 + 1, 100));
        int n = epoll_wait(ep, evs.data(), int(evs.size()), ms);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(2);
        }
        for (int i = 0; i < n; ++i) on_event(conns[evs[i].data.u32], evs[i].events);
        connect_more();
    }
}

void usage() {
    fprintf(stderr,
            "usage: wsload --port P [--host H] [--path /] [-c N] [--size S] [--text|--binary] [--inflight K]\n"
            "              [--warmup W] [--duration D] [--count M] [--timeout T] [--cpu-pids PID,...]\n"
            "       wsload --port P --idle N [--hold T] [--max-connecting 256]\n");
    exit(2);
}

void parse_args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage();
            return argv[++i];
        };
        if (a == "--host") opt.host = val();
        else if (a == "--port") opt.port = std::stoi(val());
        else if (a == "--path") opt.path = val();
        else if (a == "-c" || a == "--connections") opt.connections = std::stoi(val());
        else if (a == "--size") opt.size = std::stoul(val());
        else if (a == "--text") opt.binary = false, opt.binary_set = true;
        else if (a == "--binary") opt.binary = true, opt.binary_set = true;
        else if (a == "--inflight") opt.inflight = std::stoi(val());
        else if (a == "--warmup") opt.warmup = std::stod(val());
        else if (a == "--duration") opt.duration = std::stod(val());
        else if (a == "--count") opt.count = std::stol(val());
        else if (a == "--idle") opt.idle = std::stoi(val());
        else if (a == "--hold") opt.hold = std::stod(val());
        else if (a == "--timeout") opt.timeout = std::stod(val());
        else if (a == "--max-connecting") opt.max_connecting = std::stoi(val());
        else if (a == "--cpu-pids") {
            std::string s = val();
            size_t p = 0;
            while (p < s.size()) {
                size_t q = s.find(',', p);
                if (q == std::string::npos) q = s.size();
                if (q > p) opt.cpu_pids.push_back(std::stoi(s.substr(p, q - p)));
                p = q + 1;
            }
        } else usage();
    }
    if (opt.port <= 0 || opt.connections < 1 || opt.inflight < 1 || opt.max_connecting < 1) usage();
    if (!opt.binary_set) opt.binary = opt.size > 125;  // small: text, large: binary, unless told
}

}  // namespace

int main(int argc, char** argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    int n = opt.idle ? opt.idle : opt.connections;
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = rlim_t(n) + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = std::min(want, rl.rlim_max);
        if (rl.rlim_max < want) {
            rl.rlim_cur = rl.rlim_max = want;  // needs CAP_SYS_RESOURCE; fall back to the hard limit
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
                getrlimit(RLIMIT_NOFILE, &rl);
                rl.rlim_cur = rl.rlim_max;
            }
        }
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < want) {
        fprintf(stderr, "wsload: RLIMIT_NOFILE is %llu, need %llu for %d connections\n",
                (unsigned long long)rl.rlim_cur, (unsigned long long)want, n);
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(opt.port));
    if (inet_pton(AF_INET, opt.host.c_str(), &addr.sin_addr) != 1) {
        fprintf(stderr, "wsload: --host must be an IPv4 address\n");
        return 2;
    }
    payload.resize(opt.size);
    for (size_t i = 0; i < opt.size; ++i) payload[i] = uint8_t('a' + i % 26);  // valid UTF-8 for text frames
    ep = epoll_create1(EPOLL_CLOEXEC);
    conns.resize(size_t(n));

    // connect and handshake, at most --max-connecting at a time
    uint64_t t0 = now_ns();
    uint64_t hs_deadline = t0 + uint64_t((opt.timeout + n / 500.0) * 1e9);
    connect_more();
    loop(hs_deadline, [] { return connecting == 0 && next_to_connect == int(conns.size()); });
    double handshake_s = double(now_ns() - t0) / 1e9;
    long stuck = connecting;
    for (auto& c : conns)
        if (c.st == State::Connecting || c.st == State::Handshake) close_conn(c, false, "handshake timed out");
    std::string mode;
    char extra[1024] = "";
    bool ok;
    if (opt.idle) {
        mode = "idle";
        int opened = open_count;
        printf("READY %d\n", opened);
        fflush(stdout);
        uint64_t h0 = now_ns();
        loop(h0 + uint64_t(opt.hold * 1e9), [] { return false; });
        snprintf(extra, sizeof extra,
                 "\"requested\": %d, \"opened\": %d, \"held\": %d, \"hold_s\": %.3f, \"pings_answered\": %ld",
                 n, opened, open_count, double(now_ns() - h0) / 1e9, stats.pings);
        ok = opened == n && open_count == n;
    } else {
        mode = opt.count ? "count" : "echo";
        double window_s = 0, client_cpu = 0, busy = 0;
        long long server_ticks = 0;
        if (opt.count) {
            uint64_t deadline = now_ns() + uint64_t(opt.timeout * 1e9);
            in_window = true;
            loop(deadline, [] {
                for (auto& c : conns)
                    if (c.fd >= 0 && c.echoed < opt.count) return false;
                return true;
            });
            in_window = false;
        } else {
            uint64_t w0 = now_ns();
            loop(w0 + uint64_t(opt.warmup * 1e9), [] { return false; });
            std::vector<long long> ticks0;
            for (int pid : opt.cpu_pids) ticks0.push_back(proc_ticks(pid));
            double cpu0 = process_cpu_s(), busy0 = machine_busy_s();
            uint64_t m0 = now_ns();
            in_window = true;
            loop(m0 + uint64_t(opt.duration * 1e9), [] { return false; });
            in_window = false;
            uint64_t m1 = now_ns();
            double cpu1 = process_cpu_s(), busy1 = machine_busy_s();
            for (size_t i = 0; i < opt.cpu_pids.size(); ++i) server_ticks += proc_ticks(opt.cpu_pids[i]) - ticks0[i];
            window_s = double(m1 - m0) / 1e9;
            client_cpu = cpu1 - cpu0;
            busy = busy1 - busy0;
            uint64_t stall = uint64_t(opt.timeout * 1e9);
            for (auto& c : conns)
                if (c.fd >= 0 && c.st == State::Open && m1 - c.last_progress > stall) ++stats.stalled;
        }
        long total = 0, mn = -1, mx = 0;
        for (auto& c : conns) {
            long v = opt.count ? c.echoed : c.echoed_window;
            total += v;
            mn = mn < 0 ? v : std::min(mn, v);
            mx = std::max(mx, v);
        }
        double server_cpu = double(server_ticks) / double(sysconf(_SC_CLK_TCK));
        snprintf(extra, sizeof extra,
                 "\"connections\": %d, \"open\": %d, \"size\": %zu, \"binary\": %s, \"inflight\": %d, "
                 "\"messages\": %ld, \"window_s\": %.4f, \"msgs_per_s\": %.1f, \"per_conn_min\": %ld, "
                 "\"per_conn_max\": %ld, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"client_cpu_s\": %.4f, "
                 "\"client_cpu_pct\": %.1f, \"server_cpu_s\": %s, \"machine_busy_s\": %.3f, \"stalled\": %ld",
                 n, open_count, opt.size, opt.binary ? "true" : "false", opt.inflight, total, window_s,
                 window_s > 0 ? double(total) / window_s : 0.0, mn, mx, hist.pct_ms(50), hist.pct_ms(99), client_cpu,
                 window_s > 0 ? client_cpu / window_s * 100 : 0.0,
                 opt.cpu_pids.empty() ? "null" : std::to_string(server_cpu).c_str(), busy, stats.stalled);
        ok = total > 0 && open_count == n && stats.stalled == 0 && (!opt.count || total == long(n) * opt.count);
    }
    // close politely: a close frame (1000), then wait up to 1 s for the server's close or EOF
    sending = false;
    for (auto& c : conns) {
        if (c.fd >= 0 && c.st == State::Open) {
            c.st = State::Closing;
            c.queued = std::min<long>(c.queued, c.off ? 1 : 0);  // finish a partly sent frame only
            std::string code("\x03\xe8", 2);
            queue_ctrl(c, 8, code);
            flush(c);
        }
    }
    loop(now_ns() + 1000000000ull, [] { return open_count == 0; });
    long unclosed = open_count;
    for (auto& c : conns)
        if (c.fd >= 0) close_conn(c, false, "");
    long errors = stats.connect_failures + stats.handshake_failures + stats.closed_by_server + stats.bad_echo +
                  stats.protocol_errors + stats.stalled;
    ok = ok && errors == 0;
    printf("{\"mode\": \"%s\", %s, \"handshakes\": %ld, \"handshake_s\": %.3f, \"handshake_timeouts\": %ld, "
           "\"errors\": {\"connect\": %ld, \"handshake\": %ld, \"closed_by_server\": %ld, \"bad_echo\": %ld, "
           "\"protocol\": %ld, \"stalled\": %ld}, \"close_unanswered\": %ld, \"first_error\": \"%s\", \"ok\": %s}\n",
           mode.c_str(), extra, stats.handshakes, handshake_s, stuck, stats.connect_failures,
           stats.handshake_failures, stats.closed_by_server, stats.bad_echo, stats.protocol_errors, stats.stalled,
           unclosed, json_escape(stats.first_error).c_str(), ok ? "true" : "false");
    return ok ? 0 : 1;
}
