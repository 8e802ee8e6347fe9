// Byte buffers owned by one connection at a time, recycled through a per-loop pool so steady-state
// serving allocates nothing. One owner per buffer; everyone else borrows views into it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string_view>
#include <utility>
#include <vector>

namespace fulmen::base {

// A contiguous byte buffer with a consumed prefix [0, start) and data [start, end).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t capacity) { reserve(capacity); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(data_); }
  void swap(Buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(capacity_, o.capacity_);
    std::swap(start_, o.start_);
    std::swap(end_, o.end_);
  }

  char* data() noexcept { return data_; }
  const char* data() const noexcept { return data_; }
  size_t capacity() const noexcept { return capacity_; }
  size_t start() const noexcept { return start_; }
  size_t end() const noexcept { return end_; }
  size_t size() const noexcept { return end_ - start_; }
  bool empty() const noexcept { return end_ == start_; }
  char* begin_ptr() noexcept { return data_ + start_; }
  const char* begin_ptr() const noexcept { return data_ + start_; }
  char* end_ptr() noexcept { return data_ + end_; }
  size_t space() const noexcept { return capacity_ - end_; }
  std::string_view view() const noexcept { return {data_ + start_, end_ - start_}; }

  void commit(size_t n) noexcept { end_ += n; }
  void consume(size_t n) noexcept {
    start_ += n;
    if (start_ == end_) start_ = end_ = 0;
  }
  void clear() noexcept { start_ = end_ = 0; }
  // Moves the unconsumed bytes to the front so that space() is as large as it can be.
  void compact() noexcept {
    if (start_ == 0) return;
    size_t n = end_ - start_;
    if (n) std::memmove(data_, data_ + start_, n);
    start_ = 0;
    end_ = n;
  }
  // Sets the data window directly; used by the connection to keep a request head in place.
  void set_window(size_t start, size_t end) noexcept {
    start_ = start;
    end_ = end;
  }

  void reserve(size_t capacity) {
    if (capacity <= capacity_) return;
    void* p = std::realloc(data_, capacity);
    if (!p) throw std::bad_alloc();
    data_ = static_cast<char*>(p);
    capacity_ = capacity;
  }
  // Makes room for n more bytes at the end, compacting first and growing only if needed.
  void ensure_space(size_t n) {
    if (space() >= n) return;
    compact();
    if (space() >= n) return;
    size_t want = capacity_ ? capacity_ : 4096;
    while (want - end_ < n) want *= 2;
    reserve(want);
  }
  void append(const void* p, size_t n) {
    if (n == 0) return;  // p may be null (an empty string_view): memcpy must not see it
    ensure_space(n);
    std::memcpy(data_ + end_, p, n);
    end_ += n;
  }
  void append(std::string_view s) { append(s.data(), s.size()); }
  // Shrinks a buffer that grew for one large response back to its pooled size.
  void shrink_to(size_t capacity) {
    if (capacity_ <= capacity || size() > capacity) return;
    compact();
    void* p = std::realloc(data_, capacity);
    if (!p) return;
    data_ = static_cast<char*>(p);
    capacity_ = capacity;
  }

 private:
  char* data_ = nullptr;
  size_t capacity_ = 0;
  size_t start_ = 0;
  size_t end_ = 0;
};

// Free list of equally sized buffers. Single-threaded: each loop has its own.
class BufferPool {
 public:
  explicit BufferPool(size_t buffer_size) : size_(buffer_size) {}
  // Only pool mode (app threads besides the loop) turns the lock on; the default path never locks.
  void set_shared(bool shared) noexcept { shared_ = shared; }
  std::unique_ptr<Buffer> get() {
    if (shared_) {
      std::lock_guard<std::mutex> g(mu_);
      return get_unlocked();
    }
    return get_unlocked();
  }
  void put(std::unique_ptr<Buffer> b) {
    if (shared_) {
      std::lock_guard<std::mutex> g(mu_);
      put_unlocked(std::move(b));
      return;
    }
    put_unlocked(std::move(b));
  }
  size_t buffer_size() const noexcept { return size_; }
  // For stats() and tests; readable from any thread (writers are serialized by the pool's lock
  // in pool mode, or are the loop thread alone).
  size_t allocated() const noexcept { return allocated_.load(std::memory_order_relaxed); }
  size_t free_count() const noexcept { return free_.size(); }

 private:
  std::unique_ptr<Buffer> get_unlocked() {
    if (!free_.empty()) {
      auto b = std::move(free_.back());
      free_.pop_back();
      return b;
    }
    allocated_.store(allocated_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return std::make_unique<Buffer>(size_);
  }
  void put_unlocked(std::unique_ptr<Buffer> b) {
    if (!b) return;
    b->clear();
    b->shrink_to(size_);
    if (free_.size() < kMaxFree) free_.push_back(std::move(b));
  }

  static constexpr size_t kMaxFree = 1024;  // bounds memory kept after a burst of connections
  size_t size_;
  std::atomic<size_t> allocated_{0};
  std::vector<std::unique_ptr<Buffer>> free_;
  bool shared_ = false;
  std::mutex mu_;
};

}  // namespace fulmen::base
