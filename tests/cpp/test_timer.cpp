// TimerList (src/core/net/timer.hpp): per-kind lists kept sorted by appending, so arm, disarm and
// expiry are O(1). Checks ordering, re-arming, expiry exactly at the deadline, and moving nodes
// between lists.
#include "core/net/timer.hpp"

#include <gtest/gtest.h>

#include <climits>
#include <vector>

namespace fulmen::net {
namespace {

std::vector<TimerNode*> drain(TimerList& l, int64_t now) {
  std::vector<TimerNode*> out;
  while (TimerNode* n = l.pop_expired(now)) out.push_back(n);
  return out;
}

TEST(TimerList, EmptyHasNoDeadline) {
  TimerList l(100);
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l.next_deadline(), INT64_MAX);
  EXPECT_EQ(l.pop_expired(INT64_MAX), nullptr);
}

TEST(TimerList, ArmSetsDeadlineAndList) {
  TimerList l(100);
  TimerNode n;
  EXPECT_FALSE(n.armed());
  l.arm(n, 1000);
  EXPECT_TRUE(n.armed());
  EXPECT_EQ(n.list, &l);
  EXPECT_EQ(n.deadline_ms, 1100);
  EXPECT_EQ(l.next_deadline(), 1100);
  EXPECT_FALSE(l.empty());
}

TEST(TimerList, ExpiresAtDeadlineNotBefore) {
  TimerList l(100);
  TimerNode n;
  l.arm(n, 0);
  EXPECT_EQ(l.pop_expired(99), nullptr);  // N-1
  EXPECT_TRUE(n.armed());
  EXPECT_EQ(l.pop_expired(100), &n);      // N
  EXPECT_FALSE(n.armed());
  EXPECT_EQ(n.prev, nullptr);
  EXPECT_EQ(n.next, nullptr);
  EXPECT_TRUE(l.empty());
  l.arm(n, 0);
  EXPECT_EQ(l.pop_expired(101), &n);      // N+1
  EXPECT_EQ(l.pop_expired(101), nullptr);
}

TEST(TimerList, PopsInArmOrder) {
  TimerList l(10);
  TimerNode a, b, c;
  l.arm(a, 0);
  l.arm(b, 1);
  l.arm(c, 2);
  EXPECT_EQ(l.next_deadline(), 10);
  EXPECT_EQ(drain(l, 10), (std::vector<TimerNode*>{&a}));
  EXPECT_EQ(l.next_deadline(), 11);
  EXPECT_EQ(drain(l, 100), (std::vector<TimerNode*>{&b, &c}));
}

TEST(TimerList, EqualDeadlinesAllExpireTogether) {
  TimerList l(5);
  TimerNode a, b, c;
  l.arm(a, 7);
  l.arm(b, 7);
  l.arm(c, 7);
  EXPECT_TRUE(drain(l, 11).empty());
  EXPECT_EQ(drain(l, 12), (std::vector<TimerNode*>{&a, &b, &c}));
}

TEST(TimerList, RearmMovesNodeToTail) {
  TimerList l(10);
  TimerNode a, b, c;
  l.arm(a, 0);
  l.arm(b, 0);
  l.arm(c, 0);
  l.arm(a, 5);  // re-arm the head
  EXPECT_EQ(a.deadline_ms, 15);
  EXPECT_EQ(l.next_deadline(), 10);
  EXPECT_EQ(drain(l, 10), (std::vector<TimerNode*>{&b, &c}));
  EXPECT_EQ(drain(l, 15), (std::vector<TimerNode*>{&a}));
}

TEST(TimerList, RearmTailAndMiddle) {
  TimerList l(10);
  TimerNode a, b, c;
  l.arm(a, 0);
  l.arm(b, 1);
  l.arm(c, 2);
  l.arm(c, 3);  // tail re-armed: stays tail
  l.arm(b, 4);  // middle re-armed
  EXPECT_EQ(drain(l, 100), (std::vector<TimerNode*>{&a, &c, &b}));
}

TEST(TimerList, DisarmHeadMiddleTail) {
  TimerList l(10);
  TimerNode a, b, c, d;
  l.arm(a, 0);
  l.arm(b, 1);
  l.arm(c, 2);
  l.arm(d, 3);
  TimerList::disarm(b);  // middle
  EXPECT_FALSE(b.armed());
  TimerList::disarm(a);  // head
  EXPECT_EQ(l.next_deadline(), 12);
  TimerList::disarm(d);  // tail
  EXPECT_EQ(drain(l, 100), (std::vector<TimerNode*>{&c}));
  EXPECT_TRUE(l.empty());
  // After the tail went, appending must link from the new tail.
  l.arm(a, 50);
  l.arm(b, 51);
  EXPECT_EQ(drain(l, 100), (std::vector<TimerNode*>{&a, &b}));
}

TEST(TimerList, DisarmUnarmedIsNoop) {
  TimerNode n;
  TimerList::disarm(n);
  EXPECT_FALSE(n.armed());
}

TEST(TimerList, DisarmOnlyNodeEmptiesList) {
  TimerList l(10);
  TimerNode n;
  l.arm(n, 0);
  TimerList::disarm(n);
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l.next_deadline(), INT64_MAX);
}

TEST(TimerList, ArmMovesNodeBetweenLists) {
  TimerList keep_alive(100), header(30);
  TimerNode a, b;
  keep_alive.arm(a, 0);
  keep_alive.arm(b, 0);
  header.arm(a, 10);  // moves a off keep_alive
  EXPECT_EQ(a.list, &header);
  EXPECT_EQ(a.deadline_ms, 40);
  EXPECT_EQ(drain(keep_alive, 1000), (std::vector<TimerNode*>{&b}));
  EXPECT_EQ(drain(header, 39).size(), 0u);
  EXPECT_EQ(drain(header, 40), (std::vector<TimerNode*>{&a}));
  EXPECT_TRUE(keep_alive.empty());
  EXPECT_TRUE(header.empty());
}

TEST(TimerList, SetDurationAffectsOnlyLaterArms) {
  TimerList l(10);
  TimerNode a, b;
  l.arm(a, 0);
  l.set_duration(20);
  EXPECT_EQ(l.duration(), 20);
  l.arm(b, 0);
  EXPECT_EQ(a.deadline_ms, 10);
  EXPECT_EQ(b.deadline_ms, 20);
}

TEST(TimerList, OwnerSurvivesArmAndPop) {
  TimerList l(1);
  int obj = 0;
  TimerNode n;
  n.owner = &obj;
  l.arm(n, 0);
  TimerNode* got = l.pop_expired(1);
  ASSERT_EQ(got, &n);
  EXPECT_EQ(got->owner, &obj);
}

TEST(TimerList, ManyNodesStayOrdered) {
  TimerList l(1000);
  std::vector<TimerNode> nodes(500);
  for (size_t i = 0; i < nodes.size(); ++i) l.arm(nodes[i], int64_t(i));
  // Re-arm every even node later: odds keep their order and come first.
  for (size_t i = 0; i < nodes.size(); i += 2) l.arm(nodes[i], 1000);
  int64_t last = INT64_MIN;
  size_t count = 0;
  while (TimerNode* n = l.pop_expired(INT64_MAX - 1)) {
    EXPECT_GE(n->deadline_ms, last);
    last = n->deadline_ms;
    ++count;
  }
  EXPECT_EQ(count, nodes.size());
}

}  // namespace
}  // namespace fulmen::net
