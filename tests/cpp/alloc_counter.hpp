// Allocation check for the server tests: operator new is replaced (alloc_counter.cpp) and counts
// the calls made on threads a test marks (the server's loop and pool threads), so "no heap
// allocation per request in steady state" is measured, not assumed. Link alloc_counter.cpp into
// the test's executable once: fulmen_add_test(<name> <test>.cpp alloc_counter.cpp).
#pragma once

#include <atomic>
#include <cstdint>

namespace fulmen::test {

extern thread_local bool t_count_allocs;       // set on the threads whose allocations count
extern std::atomic<uint64_t> g_counted_allocs;  // operator new calls made on them

}  // namespace fulmen::test
