#include "proxy/metrics.h"

namespace shunt::proxy {

Metrics& metrics() {
  static Metrics instance;
  return instance;
}

}  // namespace shunt::proxy
