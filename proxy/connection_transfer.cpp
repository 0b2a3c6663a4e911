#include "proxy/connection_transfer.h"

namespace shunt::proxy {

TransferredConnection describe(const ConnectionInfo& info, const SplicedPairState& state) {
  TransferredConnection t;
  t.id = info.id;
  t.listener = info.listener;
  t.src = info.src;
  t.dst = info.dst;
  t.src_pod = info.src_pod;
  t.dst_pod = info.dst_pod;
  t.started = info.started;
  t.started_wall = info.started_wall;
  t.bytes_up = info.bytes_up.load(std::memory_order_relaxed);
  t.bytes_down = info.bytes_down.load(std::memory_order_relaxed);
  t.path_up = info.path_up.load(std::memory_order_relaxed);
  t.path_down = info.path_down.load(std::memory_order_relaxed);
  t.datapath = info.datapath.load(std::memory_order_relaxed);
  {
    std::lock_guard lock(info.mu);
    t.rule = info.rule;
    t.basis = info.basis;
  }
  t.state = state;
  return t;
}

}  // namespace shunt::proxy
