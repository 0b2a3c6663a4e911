#include "netlink/netlink.h"

#include "netlink/netns.h"

#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <optional>

namespace shunt::pods {

NlMessage::NlMessage(std::uint16_t type, std::uint16_t flags) : buf_(MNL_SOCKET_BUFFER_SIZE) {
  nlh_ = mnl_nlmsg_put_header(buf_.data());
  nlh_->nlmsg_type = type;
  nlh_->nlmsg_flags = NLM_F_REQUEST | flags;
}

void NlMessage::put_str(std::uint16_t type, std::string_view s) {
  // Kernel string attributes are NUL-terminated.
  std::string copy(s);
  mnl_attr_put_strz(nlh_, type, copy.c_str());
}

void NlMessage::put_raw(const void* data, std::size_t len) {
  void* dst = mnl_nlmsg_get_payload_tail(nlh_);
  std::memcpy(dst, data, len);
  nlh_->nlmsg_len += MNL_ALIGN(len);
}

Result<NetlinkSocket> NetlinkSocket::open() {
  mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
  if (!s) return SysError::from_errno("open rtnetlink socket");
  NetlinkSocket sock(s);
  if (mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) return SysError::from_errno("bind rtnetlink socket");
  // Extended acks carry the kernel's reason text; not needed for errno, but
  // enabling them keeps error replies small (no echoed request).
  // A kernel without it sends larger error replies, which the reader
  // handles: the result is ignored on purpose.
  int one = 1;
  (void)mnl_socket_setsockopt(s, NETLINK_CAP_ACK, &one, sizeof(one));
  sock.seq_ = static_cast<std::uint32_t>(::time(nullptr));
  return sock;
}

Result<NetlinkSocket> NetlinkSocket::open_in(const Netns& ns) {
  std::optional<Result<NetlinkSocket>> out;
  Status entered = ns.run_inside([&]() -> Status {
    out.emplace(open());
    return ok_status();
  });
  if (!entered) return entered.error();
  return std::move(*out);
}

Status NetlinkSocket::request(NlMessage& msg, const std::string& what,
                              const std::function<void(const nlmsghdr*)>& on_message) {
  msg.get()->nlmsg_flags |= NLM_F_ACK;
  return run(msg, on_message ? &on_message : nullptr, what);
}

Status NetlinkSocket::dump(NlMessage& msg, const std::function<void(const nlmsghdr*)>& on_message,
                           const std::string& what) {
  msg.get()->nlmsg_flags |= NLM_F_DUMP;
  return run(msg, &on_message, what);
}

namespace {
struct CallbackState {
  const std::function<void(const nlmsghdr*)>* on_message;
};
int data_cb(const nlmsghdr* nlh, void* data) {
  auto* st = static_cast<CallbackState*>(data);
  if (st->on_message) (*st->on_message)(nlh);
  return MNL_CB_OK;
}
}  // namespace

Status NetlinkSocket::run(NlMessage& msg, const std::function<void(const nlmsghdr*)>* on_message,
                          const std::string& what) {
  nlmsghdr* nlh = msg.get();
  nlh->nlmsg_seq = ++seq_;
  const unsigned portid = mnl_socket_get_portid(sock_.get());
  if (mnl_socket_sendto(sock_.get(), nlh, nlh->nlmsg_len) < 0) return SysError::from_errno(what);

  // 32 KiB: the size libmnl recommends for dumps (MNL_SOCKET_DUMP_SIZE in newer libmnl).
  std::vector<char> buf(32768);
  CallbackState st{on_message};
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(sock_.get(), buf.data(), buf.size());
    if (n < 0) return SysError::from_errno(what);
    // mnl_cb_run turns NLMSG_ERROR into -1/errno and NLMSG_DONE / the ack
    // into MNL_CB_STOP.
    const int rc = mnl_cb_run(buf.data(), static_cast<size_t>(n), nlh->nlmsg_seq, portid, data_cb, &st);
    if (rc < 0) return SysError::from_errno(what);
    if (rc == MNL_CB_STOP) return ok_status();
  }
}

}  // namespace shunt::pods
