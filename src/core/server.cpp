// One worker's server loop; see server.hpp.
#include "core/server.hpp"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <thread>
#include <cstring>
#include <ctime>
#include <string>

#include "core/base/allocator.hpp"
#include "core/base/clock.hpp"
#include "core/http1/connection.hpp"

namespace fulmen {

namespace {
constexpr int kAcceptBatch = 64;          // accepts per listener wake-up, so one busy listener
                                          // cannot starve the connections already open
constexpr int64_t kLingerMs = 2000;       // how long a closing connection drains the client
constexpr int64_t kWsCloseMs = 5000;      // after our WebSocket close frame, wait this long for the
                                          // client's before closing the TCP connection anyway
constexpr int64_t kAcceptPauseMs = 100;   // back-off when out of file descriptors
constexpr size_t kAccessFlushBytes = 32 * 1024;
// Workers forked by a supervisor share one listening socket. EPOLLEXCLUSIVE wakes one waiting
// worker per new connection instead of all of them (the thundering herd); a worker busy outside
// epoll_wait is skipped, so the connection goes to an idle one. Harmless with a single worker.
constexpr uint32_t kListenEvents = EPOLLIN | EPOLLEXCLUSIVE;
}  // namespace

struct Server::Watchdog {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;      // run() returned
  bool started = false;
  int64_t limit_ms = 0;   // how long after the first stop request to wait
};

Server::Server(ServerConfig config, http1::AppHandler* app, base::Logger* logger)
    : config_(std::move(config)),
      app_(app),
      logger_(logger),
      in_pool_(config_.buffer_size + kBodySlack),
      out_pool_(16 * 1024),
      keep_alive_timers_(config_.keep_alive_ms),
      header_timers_(config_.header_timeout_ms),
      io_timers_(config_.body_timeout_ms),
      linger_timers_(kLingerMs),
      ws_ping_timers_(config_.ws_ping_interval_ms),
      ws_pong_timers_(config_.ws_ping_timeout_ms),
      ws_close_timers_(kWsCloseMs) {
  block_hooks_ = &no_hooks_;
  watchdog_ = std::make_shared<Watchdog>();
  if (config_.threads > 1) {
    in_pool_.set_shared(true);
    out_pool_.set_shared(true);
  }
  for (size_t i = 0; i < config_.listeners.size(); ++i)
    listeners_.push_back(std::make_unique<Listener>(this, int(i), config_.listeners[i]));
}

Server::~Server() {
  for (auto& c : all_conns_)
    if (!c->is_lent() && c->is_open()) c->close_now();
  {
    std::lock_guard<std::mutex> g(watchdog_->mu);
    watchdog_->done = true;  // a watchdog must never outlive the server it guards
    watchdog_->cv.notify_all();
  }
  if (return_fd_ >= 0) ::close(return_fd_);
}

void Server::service_wakeup() noexcept {
  loop_.drain_wake();
  if (loop_hooks_) loop_hooks_->on_wakeup();
}

int64_t Server::stop_wait_deadline_ms() const noexcept {
  int req = stop_request_.load(std::memory_order_acquire);
  if (req == 0) return -1;
  int64_t at = stop_at_ms_.load(std::memory_order_acquire);
  return req == 2 ? at : at + config_.graceful_timeout_ms;
}

void Server::ReturnHandler::on_io(uint32_t) noexcept {
  uint64_t v;
  ssize_t r = ::read(server_->return_fd_, &v, sizeof v);
  (void)r;
  server_->drain_returned();
}

ServerStats Server::stats() const noexcept {
  constexpr auto r = std::memory_order_relaxed;
  ServerStats s;
  s.connections_total = counters_.connections_total.load(r);
  s.connections_open = counters_.connections_open.load(r);
  s.requests_total = counters_.requests_total.load(r);
  s.connections_allocated = counters_.connections_allocated.load(r);
  s.buffers_allocated = in_pool_.allocated() + out_pool_.allocated();
  return s;
}

void Server::stop(bool graceful) noexcept {
  int want = graceful ? 1 : 2;
  int cur = stop_request_.load();
  while (cur < want && !stop_request_.compare_exchange_weak(cur, want)) {
  }
  int64_t unset = -1;
  stop_at_ms_.compare_exchange_strong(unset, base::monotonic_ms());
  loop_.wake();
}

// Runs on any thread (even inside a signal handler's Python code): everything it touches is
// the shared Watchdog state.
void Server::start_watchdog(int64_t ms) noexcept {
  auto wd = watchdog_;
  std::lock_guard<std::mutex> g(wd->mu);
  if (wd->done) return;
  if (wd->started) {
    // An immediate stop after a graceful one shortens the wait.
    if (ms < wd->limit_ms) {
      wd->limit_ms = ms;
      wd->cv.notify_all();
    }
    return;
  }
  wd->started = true;
  wd->limit_ms = ms;
  try {
    std::thread([wd] {
      auto start = std::chrono::steady_clock::now();
      std::unique_lock<std::mutex> lk(wd->mu);
      for (;;) {
        auto deadline = start + std::chrono::milliseconds(wd->limit_ms);
        if (wd->cv.wait_until(lk, deadline, [&] { return wd->done; })) return;
        if (std::chrono::steady_clock::now() >= start + std::chrono::milliseconds(wd->limit_ms)) break;
      }
      static const char kMsg[] =
          "[fulmen] shutdown did not finish in time (an application call is still running); "
          "exiting now\n";
      ssize_t r = ::write(2, kMsg, sizeof kMsg - 1);
      (void)r;
      _exit(0);
    }).detach();
  } catch (...) {
    wd->started = false;  // no thread: shutdown still proceeds, just without the backstop
  }
}

int Server::run(net::LoopHooks* loop_hooks) noexcept {
  int err = start(loop_hooks);
  if (err) return err;
  while (step(next_timeout_ms())) {
  }
  return 0;
}

int Server::start(net::LoopHooks* loop_hooks) noexcept {
  loop_hooks_ = loop_hooks;
  base::tune_allocator();  // this process is now a server: see allocator.hpp
  struct stat st;
  access_log_pipe_ = config_.access_log_fd >= 0 && fstat(config_.access_log_fd, &st) == 0 &&
                     (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
  int err = start_listening();
  if (err) finish_run();  // app threads waiting in pool_take() must be released even now
  return err;
}

bool Server::step(int timeout_ms) noexcept {
  if (finished_) return false;
  corking_ = true;
  last_step_events_ = loop_.poll_once(timeout_ms, loop_hooks_);
  corking_ = false;
  uncork();
  run_deferred();
  expire_timers();
  if (config_.supervisor_fd >= 0) notify_supervisor();
  int req = stop_request_.load();
  if (req && !stopping_) begin_shutdown();
  if (req && config_.exit_watchdog) {
    start_watchdog(req == 2 ? 2000 : config_.graceful_timeout_ms + 2000);
  }
  bool done = false;
  if (stopping_) {
    auto now = loop_.clock().now_ms();
    if (req == 2 || now >= shutdown_deadline_ms_) {
      // Out of time (or an immediate stop): close everything still open.
      for (auto& c : all_conns_) {
        if (c->is_lent()) c->force_shutdown();  // its thread owns it: only make its I/O fail
        else if (c->is_open()) c->close_now();
      }
      done = lent_ == 0 || now >= shutdown_deadline_ms_ + 200;  // a stuck app thread: give up
    } else {
      done = counters_.connections_open.load(std::memory_order_relaxed) == 0 && lent_ == 0;
    }
  } else if (accept_paused_until_ms_ && loop_.clock().now_ms() >= accept_paused_until_ms_) {
    accept_paused_until_ms_ = 0;
    for (auto& l : listeners_)
      if (!l->active && loop_.add(l->cfg_.fd, l.get(), kListenEvents) == 0) l->active = true;
  }
  flush_access_log();
  if (done) {
    finished_ = true;
    finish_run();
  }
  return !done;
}

// Beats that would block are dropped: a supervisor that is not reading loses beats, not us.
void Server::notify_supervisor() noexcept {
  if (config_.heartbeat_interval_ms > 0) {
    int64_t now = loop_.clock().now_ms();
    if (now >= next_beat_ms_) {
      next_beat_ms_ = now + config_.heartbeat_interval_ms;
      ssize_t r = ::write(config_.supervisor_fd, &kBeatByte, 1);
      (void)r;
    }
  }
  if (config_.max_requests && !retire_sent_ &&
      counters_.requests_total.load(std::memory_order_relaxed) >= config_.max_requests) {
    // Unlike a beat, the notice must not be lost: a full pipe (EAGAIN) is retried on a later
    // step (the heartbeat timer wakes the loop). Other errors (the supervisor is gone) are final.
    ssize_t r = ::write(config_.supervisor_fd, &kRetireByte, 1);
    if (r == 1 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) retire_sent_ = true;
  }
}

void Server::defer(http1::Connection* c) noexcept {
  bool first = deferred_.empty();
  deferred_.push_back(c);
  if (first && loop_hooks_) loop_hooks_->on_deferred();
}

void Server::cork(http1::Connection* c) noexcept {
  if (corked_.empty()) corked_since_ns_ = base::monotonic_ns();
  corked_.push_back(c);
}

void Server::cork_check() noexcept {
  // A slow app, or a long batch, must not hold finished responses back for long.
  if (!corked_.empty() && base::monotonic_ns() - corked_since_ns_ >= kMaxCorkNs) uncork();
}

void Server::uncork() noexcept {
  // Before run_deferred(): nothing drove these connections since they corked.
  for (http1::Connection* c : corked_) c->uncork();
  corked_.clear();
}

void Server::run_deferred() noexcept {
  // A connection may defer itself again while we run it; those wait for the next step.
  if (deferred_.empty()) return;
  deferred_running_.swap(deferred_);
  for (http1::Connection* c : deferred_running_) c->run_deferred();
  deferred_running_.clear();
}

int Server::start_listening() noexcept {
  if (!loop_.ok()) return errno ? errno : EMFILE;
  if (config_.threads > 1 && return_fd_ < 0) {
    return_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (return_fd_ < 0) return errno;
    if (int err = loop_.add(return_fd_, &return_handler_, EPOLLIN)) return err;
  }
  for (auto& l : listeners_) {
    int fd = l->cfg_.fd;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return errno;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (int err = loop_.add(fd, l.get(), kListenEvents)) return err;
    l->active = true;
  }
  return 0;
}

void Server::finish_run() noexcept {
  {
    std::lock_guard<std::mutex> g(pool_mu_);
    pool_closed_ = true;
    pool_cv_.notify_all();
  }
  std::lock_guard<std::mutex> g(watchdog_->mu);
  watchdog_->done = true;
  watchdog_->cv.notify_all();
}

void Server::begin_shutdown() noexcept {
  stopping_.store(true, std::memory_order_relaxed);
  shutdown_deadline_ms_ = loop_.clock().now_ms() + config_.graceful_timeout_ms;
  for (auto& l : listeners_) {
    if (l->active) {
      // Connections the kernel already completed are clients waiting for us: serve them.
      accept_from(*l, /*drain=*/true);
      loop_.remove(l->cfg_.fd);
    }
    l->active = false;
    if (config_.shutdown_listeners) ::shutdown(l->cfg_.fd, SHUT_RDWR);
  }
  accept_paused_until_ms_ = 0;
  for (size_t i = 0; i < all_conns_.size(); ++i) {
    http1::Connection* c = all_conns_[i].get();
    if (!c->is_lent() && c->is_open()) c->stop_if_idle();
  }
}

int Server::next_timeout_ms() const noexcept {
  if (!deferred_.empty()) return 0;
  int64_t next = INT64_MAX;
  for (const net::TimerList* list : timer_lists()) next = std::min(next, list->next_deadline());
  if (stopping_) next = std::min(next, shutdown_deadline_ms_);
  if (config_.supervisor_fd >= 0 && config_.heartbeat_interval_ms > 0) next = std::min(next, next_beat_ms_);
  if (accept_paused_until_ms_) next = std::min(next, accept_paused_until_ms_);
  if (next == INT64_MAX) return -1;
  int64_t d = next - loop_.clock().now_ms();
  if (d < 0) return 0;
  // COARSE clocks tick every few ms; round up so we never wake just before a deadline.
  return int(std::min<int64_t>(d + 5, INT_MAX));
}

void Server::expire_timers() noexcept {
  int64_t now = loop_.clock().now_ms();
  for (net::TimerList* list : timer_lists()) {
    while (net::TimerNode* n = list->pop_expired(now)) {
      static_cast<http1::Connection*>(n->owner)->on_timer(list);
    }
  }
}

void Server::Listener::on_io(uint32_t) noexcept { server_->accept_from(*this, false); }

void Server::accept_from(Listener& l, bool drain) noexcept {
  for (int i = 0; drain || i < kAcceptBatch; ++i) {
    sockaddr_storage addr;
    socklen_t len = sizeof addr;
    int fd = accept4(l.cfg_.fd, reinterpret_cast<sockaddr*>(&addr), &len,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        if (logger_)
          logger_->log(base::LogLevel::kWarning,
                       std::string("accept() failed: ") + strerror(errno) +
                           "; pausing accepts for 100 ms (raise the open-files limit: ulimit -n)");
        pause_accepting(kAcceptPauseMs);
      }
      return;
    }
    if (!l.cfg_.is_unix) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    http1::Connection* c;
    if (!free_conns_.empty()) {
      c = free_conns_.back();
      free_conns_.pop_back();
    } else {
      all_conns_.push_back(std::make_unique<http1::Connection>(this));
      c = all_conns_.back().get();
      add(counters_.connections_allocated, 1);
    }
    add(counters_.connections_total, 1);
    add(counters_.connections_open, 1);
    c->open(fd, reinterpret_cast<sockaddr*>(&addr), len, l.index_, l.cfg_.is_unix);
    if (loop_.add(fd, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) != 0) c->close_now();
  }
}

void Server::pause_accepting(int64_t ms) noexcept {
  for (auto& l : listeners_) {
    if (l->active) loop_.remove(l->cfg_.fd);
    l->active = false;
  }
  accept_paused_until_ms_ = loop_.clock().now_ms() + ms;
}

void Server::release(http1::Connection* c) noexcept {
  add(counters_.connections_open, -1);
  free_conns_.push_back(c);
}

void Server::access_log(std::string_view line) noexcept {
  if (config_.threads > 1) {
    std::lock_guard<std::mutex> g(pool_mu_);
    access_buf_.append(line);
    return;
  }
  access_buf_.append(line);
  if (access_buf_.size() >= kAccessFlushBytes) flush_access_log();
}

void Server::flush_access_log() noexcept {
  if (config_.access_log_fd < 0) return;
  base::Buffer* out = &access_buf_;
  if (config_.threads > 1) {
    // Take the lines under the lock, write them without it: app threads never wait on stdout.
    std::lock_guard<std::mutex> g(pool_mu_);
    if (access_buf_.empty()) return;
    access_buf_.swap(access_out_);
    out = &access_out_;
  }
  while (!out->empty()) {
    // Every write() holds whole lines, so processes sharing the log never split each other's:
    // O_APPEND makes a write to a file atomic whatever its size, but a pipe only up to PIPE_BUF,
    // so there the batch goes out in pieces of whole lines that fit in PIPE_BUF (a longer line
    // alone).
    size_t len = out->size();
    if (access_log_pipe_ && len > PIPE_BUF) {
      std::string_view v = out->view();
      size_t cut = v.rfind('\n', PIPE_BUF - 1);
      if (cut == std::string_view::npos) cut = v.find('\n');
      len = cut == std::string_view::npos ? v.size() : cut + 1;
    }
    ssize_t n = ::write(config_.access_log_fd, out->begin_ptr(), len);
    if (n > 0) {
      out->consume(size_t(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;  // a log we cannot write must not stall serving
  }
  out->clear();
}

// ---- pool mode ---------------------------------------------------------------------------------

void Server::dispatch_to_pool(http1::Connection* c) noexcept {
  ++lent_;
  std::lock_guard<std::mutex> g(pool_mu_);
  pool_queue_.push_back(c);
  pool_cv_.notify_one();
}

http1::Connection* Server::pool_take() noexcept {
  std::unique_lock<std::mutex> g(pool_mu_);
  pool_cv_.wait(g, [&] { return pool_closed_ || pool_head_ < pool_queue_.size(); });
  if (pool_head_ == pool_queue_.size()) return nullptr;
  http1::Connection* c = pool_queue_[pool_head_++];
  if (pool_head_ == pool_queue_.size()) {
    pool_queue_.clear();
    pool_head_ = 0;
  } else if (pool_head_ > 64 && pool_head_ * 2 > pool_queue_.size()) {
    pool_queue_.erase(pool_queue_.begin(), pool_queue_.begin() + ptrdiff_t(pool_head_));
    pool_head_ = 0;
  }
  return c;
}

void Server::return_from_pool(http1::Connection* c) noexcept {
  bool first;
  {
    std::lock_guard<std::mutex> g(pool_mu_);
    first = returned_.empty();
    returned_.push_back(c);
  }
  if (first) {
    uint64_t one = 1;
    ssize_t r = ::write(return_fd_, &one, sizeof one);
    (void)r;
  }
}

void Server::drain_returned() noexcept {
  std::vector<http1::Connection*>& batch = returned_spare_;
  {
    std::lock_guard<std::mutex> g(pool_mu_);
    if (returned_.empty()) return;
    batch.swap(returned_);
  }
  for (auto* c : batch) {
    --lent_;
    c->on_returned();
  }
  batch.clear();
}

}  // namespace fulmen
