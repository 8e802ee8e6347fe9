// Timers for connection timeouts. Every timeout of one kind has the same duration, so a list per
// kind, appended at the tail, stays sorted by deadline: arm, disarm and expire are O(1) each and
// allocate nothing (the nodes live inside the connections).
#pragma once

#include <cstdint>

namespace fulmen::net {

class TimerList;

struct TimerNode {
  TimerNode* prev = nullptr;
  TimerNode* next = nullptr;
  TimerList* list = nullptr;  // the list this node is armed on; null when disarmed
  int64_t deadline_ms = 0;
  void* owner = nullptr;      // the object the timer belongs to (set once by the owner)
  bool armed() const noexcept { return list != nullptr; }
};

class TimerList {
 public:
  explicit TimerList(int64_t duration_ms = 0) : duration_ms_(duration_ms) {}
  TimerList(const TimerList&) = delete;
  TimerList& operator=(const TimerList&) = delete;

  void set_duration(int64_t ms) noexcept { duration_ms_ = ms; }
  int64_t duration() const noexcept { return duration_ms_; }

  // (Re)arms `n` to fire duration() after now_ms, moving it from whatever list held it.
  void arm(TimerNode& n, int64_t now_ms) noexcept {
    disarm(n);
    n.deadline_ms = now_ms + duration_ms_;
    n.list = this;
    n.prev = tail_;
    n.next = nullptr;
    if (tail_) tail_->next = &n; else head_ = &n;
    tail_ = &n;
  }
  static void disarm(TimerNode& n) noexcept {
    TimerList* l = n.list;
    if (!l) return;
    if (n.prev) n.prev->next = n.next; else l->head_ = n.next;
    if (n.next) n.next->prev = n.prev; else l->tail_ = n.prev;
    n.prev = n.next = nullptr;
    n.list = nullptr;
  }
  // The earliest deadline, or INT64_MAX when empty.
  int64_t next_deadline() const noexcept { return head_ ? head_->deadline_ms : INT64_MAX; }
  // Pops one expired node (disarmed) or returns null.
  TimerNode* pop_expired(int64_t now_ms) noexcept {
    if (!head_ || head_->deadline_ms > now_ms) return nullptr;
    TimerNode* n = head_;
    disarm(*n);
    return n;
  }
  bool empty() const noexcept { return head_ == nullptr; }

 private:
  int64_t duration_ms_;
  TimerNode* head_ = nullptr;
  TimerNode* tail_ = nullptr;
};

}  // namespace fulmen::net
