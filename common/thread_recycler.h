// Per-thread free list for objects that are costly to make and free on
// every connection (copy buffers, splice pipes). A connection lives on one
// worker thread, so no lock is needed; an object given back on another
// thread (an io_context torn down at exit) goes to that thread's list, and
// after a thread's list is destroyed it is simply destroyed.
#pragma once

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

namespace shunt {

template <typename T, std::size_t kCapacity>
class ThreadRecycler {
 public:
  // An idle object of this thread, if there is one.
  // Out of line on purpose (all three): the thread-local must be looked up
  // on the calling thread, never cached in a coroutine frame across a
  // suspension that may resume elsewhere.
  [[gnu::noinline]] static std::optional<T> take() {
    FreeList* list = this_thread();
    if (!list || list->items.empty()) return std::nullopt;
    T item = std::move(list->items.back());
    list->items.pop_back();
    return item;
  }
  // Keeps `item` for this thread's next take(); destroys it when the list
  // is full or already gone.
  [[gnu::noinline]] static void give(T item) {
    FreeList* list = this_thread();
    if (list && list->items.size() < kCapacity) list->items.push_back(std::move(item));
  }

 private:
  struct FreeList {
    std::vector<T> items;
    ~FreeList() { gone = true; }
  };
  static inline thread_local bool gone = false;  // this thread's list destroyed (thread exit)
  [[gnu::noinline]] static FreeList* this_thread() {
    thread_local FreeList list;
    return gone ? nullptr : &list;
  }
};

}  // namespace shunt
