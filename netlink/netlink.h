// rtnetlink over libmnl: a move-only socket owner and a request builder.
// Every request is acknowledged (NLM_F_ACK) so kernel errors come back as
// errno with the operation named, never silently.
#pragma once

#include "common/error.h"

#include <libmnl/libmnl.h>
#include <linux/netlink.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace shunt::pods {

class Netns;

// One netlink message under construction. Nested attributes are opened with
// nest() and closed by the returned guard's destructor, so they can't leak
// open across an early return.
class NlMessage {
 public:
  NlMessage(std::uint16_t type, std::uint16_t flags);
  template <typename Header>
  Header* header() {
    if (!extra_) extra_ = mnl_nlmsg_put_extra_header(nlh_, sizeof(Header));
    return static_cast<Header*>(extra_);
  }
  void put(std::uint16_t type, const void* data, std::size_t len) { mnl_attr_put(nlh_, type, len, data); }
  void put_u8(std::uint16_t type, std::uint8_t v) { mnl_attr_put_u8(nlh_, type, v); }
  void put_u32(std::uint16_t type, std::uint32_t v) { mnl_attr_put_u32(nlh_, type, v); }
  void put_str(std::uint16_t type, std::string_view s);

  class Nest {
   public:
    Nest(nlmsghdr* nlh, nlattr* attr) : nlh_(nlh), attr_(attr) {}
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;
    ~Nest() { mnl_attr_nest_end(nlh_, attr_); }

   private:
    nlmsghdr* nlh_;
    nlattr* attr_;
  };
  [[nodiscard]] Nest nest(std::uint16_t type) { return Nest(nlh_, mnl_attr_nest_start(nlh_, type)); }
  // For IFLA_*_PEER_INFO: a struct ifinfomsg followed by attributes, all
  // inside one attribute.
  void put_raw(const void* data, std::size_t len);

  [[nodiscard]] nlmsghdr* get() { return nlh_; }

 private:
  std::vector<char> buf_;
  nlmsghdr* nlh_;
  void* extra_ = nullptr;
};

// libmnl's mnl_attr_for_each macros assign void* and do not compile as C++.
template <typename F>
void for_each_attr(const nlmsghdr* nlh, std::size_t offset, F&& f) {
  const char* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(nlh));
  for (auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(nlh, offset));
       mnl_attr_ok(a, static_cast<int>(tail - reinterpret_cast<const char*>(a))); a = mnl_attr_next(a))
    f(a);
}
template <typename F>
void for_each_nested(const nlattr* nest, F&& f) {
  const char* end = static_cast<const char*>(mnl_attr_get_payload(nest)) + mnl_attr_get_payload_len(nest);
  for (auto* a = static_cast<const nlattr*>(mnl_attr_get_payload(nest));
       mnl_attr_ok(a, static_cast<int>(end - reinterpret_cast<const char*>(a))); a = mnl_attr_next(a))
    f(a);
}

class NetlinkSocket {
 public:
  // A NETLINK_ROUTE socket in the caller's network namespace.
  static Result<NetlinkSocket> open();
  // A socket created inside `ns`: it stays bound to that namespace for its
  // whole life, so later requests need no setns().
  static Result<NetlinkSocket> open_in(const Netns& ns);

  NetlinkSocket(NetlinkSocket&&) noexcept = default;
  NetlinkSocket& operator=(NetlinkSocket&&) noexcept = default;

  // Sends `msg` with NLM_F_ACK and waits for the acknowledgement; a kernel
  // error comes back as SysError{errno, what}.
  // `on_message`, when given, sees the replies before the ack (RTM_GET*).
  Status request(NlMessage& msg, const std::string& what,
                 const std::function<void(const nlmsghdr*)>& on_message = {});
  // Sends a dump request and calls `on_message` for every reply message.
  Status dump(NlMessage& msg, const std::function<void(const nlmsghdr*)>& on_message,
              const std::string& what);

 private:
  struct Closer {
    void operator()(mnl_socket* s) const { mnl_socket_close(s); }
  };
  explicit NetlinkSocket(mnl_socket* s) : sock_(s) {}
  Status run(NlMessage& msg, const std::function<void(const nlmsghdr*)>* on_message, const std::string& what);

  std::unique_ptr<mnl_socket, Closer> sock_;
  std::uint32_t seq_ = 0;
};

}  // namespace shunt::pods
