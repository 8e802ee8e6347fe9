// Buffer and BufferPool (src/core/base/buffer.hpp): window arithmetic at the capacity edge (N and
// N+1), compaction before growth, shrinking back to the pooled size, and a pool that reuses
// instead of allocating.
#include "core/base/buffer.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace fulmen::base {
namespace {

std::string bytes(size_t n, char first = 'a') {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = char(first + i % 26);
  return s;
}

TEST(Buffer, DefaultIsEmptyWithoutStorage) {
  Buffer b;
  EXPECT_EQ(b.capacity(), 0u);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.space(), 0u);
  EXPECT_EQ(b.view(), "");
}

TEST(Buffer, FirstAppendToEmptyBufferAllocatesDefault) {
  Buffer b;
  b.append("x");
  EXPECT_EQ(b.capacity(), 4096u);
  EXPECT_EQ(b.view(), "x");
}

TEST(Buffer, AppendExactlyCapacityDoesNotGrow) {
  Buffer b(16);
  char* before = b.data();
  std::string s = bytes(16);
  b.append(s);
  EXPECT_EQ(b.capacity(), 16u);  // N: fits exactly
  EXPECT_EQ(b.data(), before);
  EXPECT_EQ(b.space(), 0u);
  EXPECT_EQ(b.view(), s);
}

TEST(Buffer, AppendOneOverCapacityGrowsAndKeepsData) {
  Buffer b(16);
  std::string s = bytes(17);
  b.append(s);  // N+1
  EXPECT_EQ(b.capacity(), 32u);
  EXPECT_EQ(b.view(), s);
}

TEST(Buffer, GrowthDoublesUntilItFits) {
  Buffer b(16);
  b.append(bytes(10));
  b.append(bytes(100, 'A'));
  EXPECT_EQ(b.capacity(), 128u);  // 16 -> 32 -> 64 -> 128
  EXPECT_EQ(b.view(), bytes(10) + bytes(100, 'A'));
}

TEST(Buffer, ConsumeAllResetsWindowToZero) {
  Buffer b(16);
  b.append("hello");
  b.consume(2);
  EXPECT_EQ(b.start(), 2u);
  EXPECT_EQ(b.view(), "llo");
  b.consume(3);
  EXPECT_EQ(b.start(), 0u);
  EXPECT_EQ(b.end(), 0u);
  EXPECT_EQ(b.space(), 16u);
}

TEST(Buffer, CompactMovesDataToFront) {
  Buffer b(16);
  b.append("0123456789");
  b.consume(4);
  b.compact();
  EXPECT_EQ(b.start(), 0u);
  EXPECT_EQ(b.end(), 6u);
  EXPECT_EQ(b.view(), "456789");
  b.compact();  // no-op at start 0
  EXPECT_EQ(b.view(), "456789");
}

TEST(Buffer, CompactOfConsumedPrefixOnlyLeavesEmpty) {
  Buffer b(8);
  b.set_window(5, 5);
  b.compact();
  EXPECT_EQ(b.start(), 0u);
  EXPECT_EQ(b.end(), 0u);
}

TEST(Buffer, EnsureSpaceCompactsBeforeGrowing) {
  Buffer b(16);
  b.append(bytes(16));
  b.consume(10);
  char* before = b.data();
  b.ensure_space(10);  // 0 free at the end, 10 free at the front: compacting is enough
  EXPECT_EQ(b.capacity(), 16u);
  EXPECT_EQ(b.data(), before);
  EXPECT_EQ(b.start(), 0u);
  EXPECT_EQ(b.view(), bytes(16).substr(10));
  EXPECT_EQ(b.space(), 10u);
}

TEST(Buffer, EnsureSpaceAtNAndNPlusOne) {
  Buffer b(16);
  b.append(bytes(6));
  b.ensure_space(10);  // N: exactly the free space
  EXPECT_EQ(b.capacity(), 16u);
  b.ensure_space(11);  // N+1
  EXPECT_EQ(b.capacity(), 32u);
  EXPECT_EQ(b.view(), bytes(6));
}

TEST(Buffer, EnsureSpaceWithoutCompactionRoomGrows) {
  Buffer b(16);
  b.append(bytes(16));
  b.consume(5);
  b.ensure_space(6);  // 5 free after compaction: must grow
  EXPECT_EQ(b.capacity(), 32u);
  EXPECT_EQ(b.start(), 0u);
  EXPECT_EQ(b.view(), bytes(16).substr(5));
}

TEST(Buffer, ReserveSmallerIsNoop) {
  Buffer b(64);
  b.append("abc");
  b.reserve(8);
  EXPECT_EQ(b.capacity(), 64u);
  EXPECT_EQ(b.view(), "abc");
}

TEST(Buffer, ShrinkToReturnsToPooledSizeKeepingData) {
  Buffer b(16);
  b.append(bytes(1000));
  ASSERT_GT(b.capacity(), 16u);
  b.consume(990);
  b.shrink_to(16);
  EXPECT_EQ(b.capacity(), 16u);
  EXPECT_EQ(b.start(), 0u);
  EXPECT_EQ(b.view(), bytes(1000).substr(990));
}

TEST(Buffer, ShrinkToKeepsDataThatWouldNotFit) {
  Buffer b(16);
  b.append(bytes(100));
  size_t cap = b.capacity();
  b.consume(83);   // 17 left: one more than the target
  b.shrink_to(16);
  EXPECT_EQ(b.capacity(), cap);
  EXPECT_EQ(b.view(), bytes(100).substr(83));
  b.consume(1);    // 16 left: exactly the target
  b.shrink_to(16);
  EXPECT_EQ(b.capacity(), 16u);
  EXPECT_EQ(b.view(), bytes(100).substr(84));
}

TEST(Buffer, ShrinkToLargerOrEqualIsNoop) {
  Buffer b(16);
  b.append("abc");
  b.shrink_to(16);
  EXPECT_EQ(b.capacity(), 16u);
  b.shrink_to(64);
  EXPECT_EQ(b.capacity(), 16u);
  EXPECT_EQ(b.view(), "abc");
}

TEST(Buffer, SetWindowExposesBytesInPlace) {
  Buffer b(16);
  b.append("GET / HTTP/1.1");
  b.set_window(4, 5);
  EXPECT_EQ(b.view(), "/");
  EXPECT_EQ(b.space(), 11u);
  b.set_window(0, 14);
  EXPECT_EQ(b.view(), "GET / HTTP/1.1");
  b.set_window(16, 16);  // at capacity: empty, no space
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.space(), 0u);
}

TEST(Buffer, CommitAfterWritingAtEndPtr) {
  Buffer b(8);
  std::memcpy(b.end_ptr(), "abcdefgh", 8);
  b.commit(8);
  EXPECT_EQ(b.view(), "abcdefgh");
  EXPECT_EQ(b.space(), 0u);
}

TEST(BufferPool, GetGivesBufferOfPoolSize) {
  BufferPool pool(1024);
  auto b = pool.get();
  ASSERT_TRUE(b);
  EXPECT_EQ(b->capacity(), 1024u);
  EXPECT_TRUE(b->empty());
  EXPECT_EQ(pool.allocated(), 1u);
  EXPECT_EQ(pool.buffer_size(), 1024u);
}

TEST(BufferPool, ReusesWithoutAllocating) {
  BufferPool pool(256);
  auto first = pool.get();
  Buffer* p = first.get();
  pool.put(std::move(first));
  for (int i = 0; i < 10000; ++i) {
    auto b = pool.get();
    EXPECT_EQ(b.get(), p);
    b->append("some bytes");
    pool.put(std::move(b));
  }
  EXPECT_EQ(pool.allocated(), 1u);
  EXPECT_EQ(pool.free_count(), 1u);
}

TEST(BufferPool, ManyOutstandingThenCyclesStayFlat) {
  BufferPool pool(64);
  std::vector<std::unique_ptr<Buffer>> held;
  for (int i = 0; i < 8; ++i) held.push_back(pool.get());
  EXPECT_EQ(pool.allocated(), 8u);
  for (auto& b : held) pool.put(std::move(b));
  held.clear();
  EXPECT_EQ(pool.free_count(), 8u);
  for (int round = 0; round < 1000; ++round) {
    for (int i = 0; i < 8; ++i) held.push_back(pool.get());
    for (auto& b : held) pool.put(std::move(b));
    held.clear();
  }
  EXPECT_EQ(pool.allocated(), 8u);
}

TEST(BufferPool, PutClearsAndShrinksGrownBuffer) {
  BufferPool pool(64);
  auto b = pool.get();
  b->append(bytes(5000));
  ASSERT_GT(b->capacity(), 64u);
  pool.put(std::move(b));
  auto again = pool.get();
  EXPECT_EQ(again->capacity(), 64u);
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(pool.allocated(), 1u);
}

TEST(BufferPool, PutNullIsIgnored) {
  BufferPool pool(64);
  pool.put(nullptr);
  EXPECT_EQ(pool.free_count(), 0u);
}

TEST(BufferPool, FreeListIsBounded) {
  BufferPool pool(16);
  std::vector<std::unique_ptr<Buffer>> held;
  for (int i = 0; i < 1025; ++i) held.push_back(pool.get());
  for (auto& b : held) pool.put(std::move(b));
  EXPECT_EQ(pool.free_count(), 1024u);  // one over the bound is freed, not kept
  EXPECT_EQ(pool.allocated(), 1025u);
}

TEST(BufferPool, SharedModeFromSeveralThreads) {
  BufferPool pool(128);
  pool.set_shared(true);
  constexpr int kThreads = 4;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&pool, t] {
      for (int i = 0; i < 20000; ++i) {
        auto b = pool.get();
        b->append(std::string_view("x", 1));
        if (b->view() != "x") std::abort();
        pool.put(std::move(b));
      }
      (void)t;
    });
  }
  for (auto& t : ts) t.join();
  // Each thread holds at most one buffer at a time.
  EXPECT_LE(pool.allocated(), size_t(kThreads));
  EXPECT_EQ(pool.free_count(), pool.allocated());
}

}  // namespace
}  // namespace fulmen::base
