// Reason phrases for the status lines shunt writes itself: the proxy's
// refusals (403, 400, 408, 431, 502, 504) and the admin API's answers.
// RFC 9110 makes the phrase informational; one table keeps them alike.
#pragma once

#include <string>
#include <string_view>

namespace shunt {

inline std::string_view reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Error";
  }
}

// "HTTP/1.1 403 Forbidden\r\n"
inline std::string status_line(int status) {
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason_phrase(status)) + "\r\n";
}

}  // namespace shunt
