// The replaced global operator new/delete behind alloc_counter.hpp. A replacement may not be
// inline, so it lives here, in one source file linked into each test executable that counts.
// The replaced operator new/delete below pair malloc with free on purpose.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

#include "alloc_counter.hpp"

#include <cstdlib>
#include <new>

namespace fulmen::test {
thread_local bool t_count_allocs = false;
std::atomic<uint64_t> g_counted_allocs{0};
}  // namespace fulmen::test

using fulmen::test::g_counted_allocs;
using fulmen::test::t_count_allocs;

void* operator new(std::size_t n) {
  if (t_count_allocs) g_counted_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (t_count_allocs) g_counted_allocs.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
