// One worker's HTTP server: listeners, connections, timers and graceful shutdown around one Loop.
// It knows nothing of Python: requests go to an http1::AppHandler, blocking waits go through
// BlockHooks (the bridge releases the GIL there).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/base/buffer.hpp"
#include "core/base/log.hpp"
#include "core/http1/access_log.hpp"
#include "core/http1/exchange.hpp"
#include "core/http1/forwarded.hpp"
#include "core/net/loop.hpp"
#include "core/net/timer.hpp"
#include "core/ws/deflate.hpp"
#include "core/ws/handshake.hpp"

namespace fulmen {

namespace http1 {
class Connection;
}

struct ListenerConfig {
  int fd = -1;          // bound, listening socket handed over by the embedder
  bool is_unix = false; // no TCP_NODELAY, no peer address
};

struct ServerConfig {
  std::vector<ListenerConfig> listeners;
  http1::Limits limits;
  int threads = 1;                         // 1: app runs on the loop thread; N: on a pool
  int64_t keep_alive_ms = 5000;            // idle keep-alive connection lifetime
  int64_t header_timeout_ms = 30000;       // from the first byte of a head to its end
  int64_t body_timeout_ms = 60000;         // longest wait for body bytes or for the peer to read
  int64_t graceful_timeout_ms = 30000;     // stop(): time in-flight requests get to finish
  int access_log_fd = -1;                  // -1: no access log
  http1::AccessFormat access_format;       // compiled once; rendered per request without allocating
  size_t buffer_size = 64 * 1024;          // the request head budget; the per-connection input
                                           // buffer is this plus kBodySlack, so a head that uses
                                           // the whole budget still leaves room for body bytes
  size_t output_high_watermark = 256 * 1024;  // pause the producer above this many queued bytes
  // On stop, shut the listening sockets down so new connections are refused at once instead of
  // waiting in the backlog (a supervisor sharing them with other workers turns this off).
  bool shutdown_listeners = true;
  // A supervisor's pipe (write end, -1: none). The loop thread writes kBeatByte to it every
  // heartbeat_interval_ms (so a loop stuck in the app stops beating), and kRetireByte once when
  // max_requests requests have been served (the supervisor then starts a replacement first and
  // stops this worker gracefully). Both are checked once per loop step, never per request.
  int supervisor_fd = -1;
  int64_t heartbeat_interval_ms = 0;  // 0: no heartbeat
  uint64_t max_requests = 0;          // 0: no limit
  // On stop, a watchdog thread ends the process (_exit) if run() has not returned this long after
  // the graceful timeout: an app stuck on the loop thread cannot be interrupted any other way.
  bool exit_watchdog = true;
  // Read a body that fits in the input buffer before calling the app (inline, blocking apps:
  // WSGI). Asynchronous apps are called as soon as the head is in, as Uvicorn does.
  bool prefetch_body = true;
  // WebSocket (asynchronous apps only): answer valid Upgrade requests (off: they are plain HTTP).
  bool websocket = false;
  uint64_t ws_max_size = 16u << 20;    // bytes a message may have (1009 beyond); 0: no limit
  int64_t ws_ping_interval_ms = 20000; // ping an open WebSocket this often; 0: never
  int64_t ws_ping_timeout_ms = 20000;  // close (1011) if the pong takes longer than this
  bool ws_deflate = true;              // negotiate permessage-deflate when the client offers it
  // Beyond this many open connections a request is answered 503 and its connection closed
  // (Uvicorn's --limit-concurrency); 0: no limit. Checked per request, so it costs one compare.
  uint64_t limit_concurrency = 0;
  // --proxy-headers: read Forwarded / X-Forwarded-* (forwarded.hpp) on requests from peers in
  // `trusted` (decided once per connection, on the socket's peer, or on the PROXY header's
  // source with --proxy-protocol). `forwarded_headers`: which ones (http1::ForwardedHeader bits).
  bool proxy_headers = false;
  http1::TrustList trusted;
  unsigned forwarded_headers = http1::kDefaultForwardedHeaders;
  // --proxy-protocol: every connection starts with a PROXY v1/v2 header (proxy_protocol.hpp),
  // whose source address becomes the client's; a connection without a valid one is closed.
  bool proxy_protocol = false;
};

// Called around waits that block the calling thread (body reads, write stalls in pool threads).
class BlockHooks {
 public:
  virtual ~BlockHooks() = default;
  virtual void before_block() noexcept {}
  virtual void after_block() noexcept {}
};

struct ServerStats {
  uint64_t connections_total = 0;
  uint64_t connections_open = 0;
  uint64_t requests_total = 0;
  uint64_t buffers_allocated = 0;
  uint64_t connections_allocated = 0;
};

class Server {
 public:
  Server(ServerConfig config, http1::AppHandler* app, base::Logger* logger);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until stop(); returns 0, or an errno if the server could not start.
  int run(net::LoopHooks* loop_hooks) noexcept;
  // The same, one step at a time, for an embedder that owns the waiting (an asyncio loop watching
  // epoll_fd()): start() once, then step(0) whenever epoll_fd() is readable or next_timeout_ms()
  // has passed, until step() returns false.
  int start(net::LoopHooks* loop_hooks) noexcept;
  bool step(int timeout_ms) noexcept;
  int epoll_fd() const noexcept { return loop_.epoll_fd(); }
  int next_timeout_ms() const noexcept;
  // I/O events the last step() handled (0: it found nothing to do).
  int last_step_events() const noexcept { return last_step_events_; }
  // A connection the app touched outside the loop's own processing (an async app's send()) asks
  // to be driven on the next step; the first one of a batch calls LoopHooks::on_deferred().
  void defer(http1::Connection* c) noexcept;
  // While step() dispatches one batch of I/O events, a connection that finished a response in
  // kReadHead queues it here instead of writing at once; all go out after the batch (uncork()).
  // The clients then find several responses per wake-up instead of being woken once per write.
  // A response waits at most kMaxCorkNs plus the time one more event takes (the app's call
  // included): every drive() that ends during the batch checks the oldest cork (cork_check())
  // and sends them all once it is older than that.
  static constexpr int64_t kMaxCorkNs = 250'000;
  bool corking() const noexcept { return corking_; }
  void cork(http1::Connection* c) noexcept;
  void cork_check() noexcept;
  // Thread- and signal-safe.
  void stop(bool graceful) noexcept;

  net::Loop& loop() noexcept { return loop_; }
  const ServerConfig& config() const noexcept { return config_; }
  ServerStats stats() const noexcept;
  void set_block_hooks(BlockHooks* h) noexcept { block_hooks_ = h; }

  // ---- for Connection --------------------------------------------------------------------------
  http1::AppHandler* app() noexcept { return app_; }
  base::Logger* logger() noexcept { return logger_; }
  BlockHooks* block_hooks() noexcept { return block_hooks_; }
  base::BufferPool& in_pool() noexcept { return in_pool_; }
  base::BufferPool& out_pool() noexcept { return out_pool_; }
  net::TimerList& keep_alive_timers() noexcept { return keep_alive_timers_; }
  net::TimerList& header_timers() noexcept { return header_timers_; }
  net::TimerList& io_timers() noexcept { return io_timers_; }
  net::TimerList& linger_timers() noexcept { return linger_timers_; }
  net::TimerList& ws_ping_timers() noexcept { return ws_ping_timers_; }
  net::TimerList& ws_pong_timers() noexcept { return ws_pong_timers_; }
  net::TimerList& ws_close_timers() noexcept { return ws_close_timers_; }
  // Scratch for parsing a WebSocket handshake (about 2 KiB of views): one per loop rather than
  // one per connection, since a parse is used and dropped within one engine call.
  ws::Handshake& ws_scratch() noexcept { return ws_scratch_; }
  // permessage-deflate: the server compresses each message on its own, so one Deflater (and one
  // output scratch) per loop serves every connection (deflate.hpp).
  ws::Deflater& ws_deflater() noexcept { return ws_deflater_; }
  std::string& ws_deflate_out() noexcept { return ws_deflate_out_; }
  bool stopping() const noexcept { return stopping_.load(std::memory_order_relaxed); }
  // A stop was asked for, even if the loop has not begun it yet (a signal handler that ran while
  // the app was running on the loop thread): responses from now on close their connection.
  bool stop_requested() const noexcept { return stop_request_.load(std::memory_order_relaxed) != 0; }
  // Inline mode, from a blocking wait on the loop thread: runs the embedder's wake-up hook (signal
  // handlers), which may request a stop.
  void service_wakeup() noexcept;
  // While a stop is requested: the time (monotonic ms) by which blocking waits must give up;
  // -1 when no stop is requested.
  int64_t stop_wait_deadline_ms() const noexcept;
  static constexpr size_t kBodySlack = 4096;
  static constexpr char kBeatByte = '.';    // on supervisor_fd: the loop is alive
  static constexpr char kRetireByte = 'M';  // on supervisor_fd: max_requests reached
  // By the thread running the exchange: the loop thread, or in pool mode any app thread.
  void count_request() noexcept {
    if (config_.threads > 1) counters_.requests_total.fetch_add(1, std::memory_order_relaxed);
    else add(counters_.requests_total, 1);
  }
  void access_log(std::string_view line) noexcept;
  // Loop thread (connection counts are written only there).
  uint64_t open_connections() const noexcept {
    return counters_.connections_open.load(std::memory_order_relaxed);
  }
  void release(http1::Connection* c) noexcept;  // the connection closed: back to the free list
  // Pool mode: hand a connection with a parsed request to an app thread / take it back.
  void dispatch_to_pool(http1::Connection* c) noexcept;
  void return_from_pool(http1::Connection* c) noexcept;  // called on a pool thread
  // Pool mode, called by the embedder's app threads: blocks until a connection is lent to this
  // thread, or returns null when the server stops.
  http1::Connection* pool_take() noexcept;

 private:
  class Listener : public net::IoHandler {
   public:
    Listener(Server* s, int index, ListenerConfig cfg) : server_(s), index_(index), cfg_(cfg) {}
    void on_io(uint32_t events) noexcept override;
    Server* server_;
    int index_;
    ListenerConfig cfg_;
    bool active = false;
  };
  void accept_from(Listener& l, bool drain) noexcept;
  void begin_shutdown() noexcept;
  void expire_timers() noexcept;
  std::array<net::TimerList*, 7> timer_lists() const noexcept {
    auto* self = const_cast<Server*>(this);
    return {&self->keep_alive_timers_, &self->header_timers_, &self->io_timers_, &self->linger_timers_,
            &self->ws_ping_timers_, &self->ws_pong_timers_, &self->ws_close_timers_};
  }
  void run_deferred() noexcept;
  void uncork() noexcept;
  void flush_access_log() noexcept;
  void drain_returned() noexcept;
  void pause_accepting(int64_t ms) noexcept;
  void start_watchdog(int64_t ms) noexcept;
  int start_listening() noexcept;
  void finish_run() noexcept;
  void notify_supervisor() noexcept;

  ServerConfig config_;
  http1::AppHandler* app_;
  base::Logger* logger_;
  BlockHooks* block_hooks_ = nullptr;
  BlockHooks no_hooks_;
  net::Loop loop_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  base::BufferPool in_pool_;
  base::BufferPool out_pool_;
  base::Buffer access_buf_;
  base::Buffer access_out_;  // swapped with access_buf_ under the lock, written outside it
  bool access_log_pipe_ = false;  // the access log is a pipe or socket: writes of <= PIPE_BUF
  net::TimerList keep_alive_timers_;
  net::TimerList header_timers_;
  net::TimerList io_timers_;
  net::TimerList linger_timers_;
  net::TimerList ws_ping_timers_;
  net::TimerList ws_pong_timers_;
  net::TimerList ws_close_timers_;  // our close frame is out: how long we wait for the client's
  ws::Handshake ws_scratch_;
  ws::Deflater ws_deflater_;
  std::string ws_deflate_out_;
  std::vector<std::unique_ptr<http1::Connection>> all_conns_;  // owns every Connection object
  std::vector<http1::Connection*> free_conns_;                   // closed ones, ready for reuse
  // What stats() reports, readable from any thread (the embedder calls stats() from Python
  // threads while the loop runs). Relaxed atomics: counters, not synchronization. Only the loop
  // thread writes the connection counts, so a plain load+store does (no locked instruction on the
  // hot path); requests are counted by pool threads too in pool mode (count_request()).
  struct Counters {
    std::atomic<uint64_t> connections_total{0};
    std::atomic<uint64_t> connections_open{0};
    std::atomic<uint64_t> requests_total{0};
    std::atomic<uint64_t> connections_allocated{0};
  } counters_;
  static void add(std::atomic<uint64_t>& c, int64_t d) noexcept {
    c.store(c.load(std::memory_order_relaxed) + uint64_t(d), std::memory_order_relaxed);
  }
  std::atomic<int> stop_request_{0};  // 0 none, 1 graceful, 2 immediate
  std::atomic<int64_t> stop_at_ms_{-1};  // CLOCK_MONOTONIC ms of the first stop request
  net::LoopHooks* loop_hooks_ = nullptr;  // during run()
  class ReturnHandler : public net::IoHandler {
   public:
    explicit ReturnHandler(Server* s) : server_(s) {}
    void on_io(uint32_t) noexcept override;
    Server* server_;
  };
  ReturnHandler return_handler_{this};
  int return_fd_ = -1;  // eventfd: pool threads hand connections back without touching the
                        // signal wake pipe (which would make the loop take the GIL)
  struct Watchdog;
  std::shared_ptr<Watchdog> watchdog_;  // shared with its thread, which may outlive us
  std::atomic<bool> stopping_{false};  // read by pool threads too
  int64_t shutdown_deadline_ms_ = 0;
  bool finished_ = false;  // step() returned false
  int last_step_events_ = 0;
  std::vector<http1::Connection*> deferred_;          // loop thread only
  std::vector<http1::Connection*> deferred_running_;  // swapped with deferred_: keeps capacity
  std::vector<http1::Connection*> corked_;             // loop thread only; see cork()
  int64_t corked_since_ns_ = 0;                        // when corked_ got its first entry
  bool corking_ = false;
  int64_t accept_paused_until_ms_ = 0;
  int64_t next_beat_ms_ = 0;     // heartbeat: when the loop next writes kBeatByte
  bool retire_sent_ = false;     // kRetireByte went out (once per run)

  // Pool mode only (threads > 1): connections lent to app threads and returned by them.
  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  // FIFO as a vector + head index, and two swapped return vectors: both keep their capacity, so
  // steady-state hand-offs allocate nothing.
  std::vector<http1::Connection*> pool_queue_;
  size_t pool_head_ = 0;
  std::vector<http1::Connection*> returned_;
  std::vector<http1::Connection*> returned_spare_;  // loop thread only
  bool pool_closed_ = false;
  int lent_ = 0;

  friend class http1::Connection;
};

}  // namespace fulmen
