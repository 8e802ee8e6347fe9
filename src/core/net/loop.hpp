// The event loop: one epoll instance per worker, edge-triggered for connections, with a wake pipe
// so signals and other threads can interrupt epoll_wait without any polling.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/base/clock.hpp"

namespace fulmen::net {

// Anything registered with the loop. One virtual call per event; data.ptr points at it.
class IoHandler {
 public:
  virtual ~IoHandler() = default;
  virtual void on_io(uint32_t events) noexcept = 0;
};

// What the embedder does around the blocking wait (the bridge releases the GIL there) and when
// the wake pipe fires (the bridge runs Python signal handlers then).
class LoopHooks {
 public:
  virtual ~LoopHooks() = default;
  virtual void before_wait() noexcept {}
  virtual void after_wait() noexcept {}
  virtual void on_wakeup() noexcept {}
  // Work was deferred to the next step (Server::defer): an embedder that drives the server with
  // step() schedules one (e.g. loop.call_soon); run() steps anyway.
  virtual void on_deferred() noexcept {}
};

class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Registers fd; edge_triggered for connections, level for listeners and pipes. Returns errno or 0.
  int add(int fd, IoHandler* h, uint32_t events) noexcept;
  int modify(int fd, IoHandler* h, uint32_t events) noexcept;
  void remove(int fd) noexcept;

  // Waits at most timeout_ms (-1: forever) and dispatches the events. Returns events handled.
  int poll_once(int timeout_ms, LoopHooks* hooks) noexcept;

  // Thread- and signal-safe: makes the current or next epoll_wait return.
  void wake() noexcept;
  // The write end of the wake pipe, for signal.set_wakeup_fd(). Non-blocking.
  int wake_write_fd() const noexcept { return wake_w_; }
  int wake_read_fd() const noexcept { return wake_r_; }
  // Empties the wake pipe (for a blocking wait that watched it itself). True if it held anything.
  bool drain_wake() noexcept;
  // True once after the wake pipe fired (and was drained).
  bool take_woken() noexcept { return woken_.exchange(false, std::memory_order_acq_rel); }

  base::Clock& clock() noexcept { return clock_; }
  const base::Clock& clock() const noexcept { return clock_; }
  bool ok() const noexcept { return epfd_ >= 0 && wake_r_ >= 0; }
  int epoll_fd() const noexcept { return epfd_; }

 private:
  class WakeHandler : public IoHandler {
   public:
    explicit WakeHandler(Loop* l) : loop_(l) {}
    void on_io(uint32_t) noexcept override;
   private:
    Loop* loop_;
  };
  int epfd_ = -1;
  int wake_r_ = -1;
  int wake_w_ = -1;
  std::atomic<bool> woken_{false};
  WakeHandler wake_handler_{this};
  base::Clock clock_;
};

}  // namespace fulmen::net
