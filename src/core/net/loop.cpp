// epoll loop; see loop.hpp.
#include "core/net/loop.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

namespace fulmen::net {

Loop::Loop() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0) {
    wake_r_ = p[0];
    wake_w_ = p[1];
    add(wake_r_, &wake_handler_, EPOLLIN);
  }
}

Loop::~Loop() {
  if (wake_r_ >= 0) close(wake_r_);
  if (wake_w_ >= 0) close(wake_w_);
  if (epfd_ >= 0) close(epfd_);
}

int Loop::add(int fd, IoHandler* h, uint32_t events) noexcept {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
}

int Loop::modify(int fd, IoHandler* h, uint32_t events) noexcept {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  return epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : errno;
}

void Loop::remove(int fd) noexcept { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

int Loop::poll_once(int timeout_ms, LoopHooks* hooks) noexcept {
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  if (hooks) hooks->before_wait();
  int n = epoll_wait(epfd_, events, kMaxEvents, timeout_ms);
  if (hooks) hooks->after_wait();
  clock_.update();
  if (n < 0) return 0;  // EINTR: a signal; the wake pipe carries it
  for (int i = 0; i < n; ++i) {
    static_cast<IoHandler*>(events[i].data.ptr)->on_io(events[i].events);
  }
  if (hooks && take_woken()) hooks->on_wakeup();
  return n;
}

void Loop::wake() noexcept {
  char c = 1;
  ssize_t r = write(wake_w_, &c, 1);  // EAGAIN means a wake is already pending: fine
  (void)r;
}

bool Loop::drain_wake() noexcept {
  char buf[256];
  bool any = false;
  while (read(wake_r_, buf, sizeof buf) > 0) any = true;
  return any;
}

void Loop::WakeHandler::on_io(uint32_t) noexcept {
  loop_->drain_wake();
  loop_->woken_.store(true, std::memory_order_release);
}

}  // namespace fulmen::net
