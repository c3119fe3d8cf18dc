// The `http` builtin: one HTTP/1.1 request over a fresh connection, Boost.Beast on Asio.
// Beast stays in this file: it is heavy to compile and nothing else needs it.

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "actors/builtin/detail_operation.hpp"
#include "actors/builtin/operation.hpp"

namespace troupe {
namespace detail {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

constexpr std::array<std::string_view, 4> http_fields = {"method", "url", "headers", "body"};

struct parsed_url {
  std::string host;  // without brackets for IPv6 literals: what the resolver wants
  std::string port;
  std::string authority;  // the Host header: host[:port] as written
  std::string target;     // path and query
};

std::string lowercase(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && lowercase(s.substr(0, prefix.size())) == prefix;
}

/// http://host[:port][/path][?query][#fragment]; the fragment is never sent.
expected<parsed_url, std::string> parse_url(std::string_view url) {
  if (istarts_with(url, "https://")) {
    return make_unexpected(std::string("https is not supported (plain http:// only): '") +
                           std::string(url) + "'");
  }
  if (!istarts_with(url, "http://")) {
    return make_unexpected("http: 'url' must start with http://, got '" + std::string(url) + "'");
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return make_unexpected(std::string("http: 'url' contains a space or a control character"));
    }
  }
  std::string_view rest = url.substr(7);
  if (const auto hash = rest.find('#'); hash != std::string_view::npos) {
    rest = rest.substr(0, hash);
  }
  const auto end_of_authority = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, end_of_authority);
  std::string_view target =
      end_of_authority == std::string_view::npos ? "" : rest.substr(end_of_authority);
  if (authority.find('@') != std::string_view::npos) {
    return make_unexpected(std::string("http: credentials in the url are not supported"));
  }
  parsed_url out;
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {  // [v6]:port
    const auto close = authority.find(']');
    if (close == std::string_view::npos) {
      return make_unexpected("http: bad IPv6 address in url '" + std::string(url) + "'");
    }
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return make_unexpected("http: bad host in url '" + std::string(url) + "'");
      }
      port = after.substr(1);
    }
  } else if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) {
    return make_unexpected("http: no host in url '" + std::string(url) + "'");
  }
  if (!port.empty()) {
    unsigned long number = 0;
    for (char c : port) {
      if (c < '0' || c > '9' || number > 65535) {
        return make_unexpected("http: bad port in url '" + std::string(url) + "'");
      }
      number = number * 10 + static_cast<unsigned long>(c - '0');
    }
    if (number == 0 || number > 65535) {
      return make_unexpected("http: bad port in url '" + std::string(url) + "'");
    }
  }
  out.host = std::string(host);
  out.port = port.empty() ? std::string("80") : std::string(port);
  out.authority = std::string(authority);
  out.target = target.empty() ? std::string("/") : std::string(target);
  if (out.target.front() == '?') {
    out.target.insert(0, "/");
  }
  return out;
}

bool is_token(std::string_view s) {
  constexpr std::string_view specials = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           specials.find(c) != std::string_view::npos;
  });
}

bool has_line_break(std::string_view s) {
  return s.find_first_of("\r\n") != std::string_view::npos || contains_nul(s);
}

struct http_spec {
  parsed_url url;
  http::request<http::string_body> request;
  std::shared_ptr<const task_policy> policy;  // null: connect anywhere
};

/// Loopback, unspecified, link-local, private (RFC 1918, unique local), shared (CGNAT),
/// benchmarking, multicast, reserved and broadcast addresses: what a request from an untrusted
/// workflow must not reach (SSRF: the service's own host, its network, cloud metadata).
bool non_public(const asio::ip::address& a) {
  if (a.is_v6()) {
    const auto v6 = a.to_v6();
    if (v6.is_v4_mapped()) {
      return non_public(asio::ip::make_address_v4(asio::ip::v4_mapped, v6));
    }
    const auto b = v6.to_bytes();
    auto v4_at = [&b](std::size_t i) {
      return asio::ip::address_v4(asio::ip::address_v4::bytes_type{b[i], b[i + 1], b[i + 2],
                                                                   b[i + 3]});
    };
    auto zero = [&b](std::size_t from, std::size_t to) {
      for (std::size_t i = from; i < to; ++i) {
        if (b[i] != 0) {
          return false;
        }
      }
      return true;
    };
    // Forms that carry an IPv4 address reach that address: judge it instead. NAT64
    // (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16), IPv4-compatible (::a.b.c.d).
    if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b) {
      if (zero(4, 12)) {
        return non_public(v4_at(12));
      }
      if (b[4] == 0x00 && b[5] == 0x01) {
        return true;  // 64:ff9b:1::/48, local-use NAT64: private by definition
      }
    }
    if (b[0] == 0x20 && b[1] == 0x02) {
      return non_public(v4_at(2));
    }
    if (zero(0, 12) && !v6.is_loopback() && !v6.is_unspecified()) {
      return non_public(v4_at(12));
    }
    // Teredo (2001::/32) tunnels to an address it encodes obscured: refuse it outright.
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] == 0x00) {
      return true;
    }
    return v6.is_loopback() || v6.is_unspecified() || v6.is_link_local() ||
           v6.is_multicast() || (b[0] & 0xfe) == 0xfc /* fc00::/7 */ ||
           (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) /* fec0::/10, site-local */;
  }
  const auto v = a.to_v4().to_uint();
  auto in = [v](std::uint32_t net, int bits) {
    const std::uint32_t mask = bits == 0 ? 0 : ~std::uint32_t{0} << (32 - bits);
    return (v & mask) == (net & mask);
  };
  return in(0x00000000, 8) || in(0x0a000000, 8) || in(0x64400000, 10) || in(0x7f000000, 8) ||
         in(0xa9fe0000, 16) || in(0xac100000, 12) || in(0xc0000000, 24) || in(0xc0a80000, 16) ||
         in(0xc6120000, 15) || in(0xe0000000, 4) || in(0xf0000000, 4);
}

expected<http_spec, std::string> parse_http_input(const json::value& input) {
  const json::object* object = input.if_object();
  if (object == nullptr) {
    return make_unexpected("http input must be an object, got " +
                           std::string(json_kind_name(input)));
  }
  if (auto field = unknown_field(*object, http_fields); !field.empty()) {
    return make_unexpected("http: unknown field '" + std::string(field) +
                           "' (known fields: " + field_list(http_fields) + ")");
  }
  const json::value* url = object->if_contains("url");
  if (url == nullptr || !url->is_string()) {
    return make_unexpected(std::string("http: 'url' (a string) is required"));
  }
  auto parsed = parse_url(url->get_string());
  if (!parsed) {
    return make_unexpected(std::move(parsed.error()));
  }
  http_spec spec;
  spec.url = std::move(*parsed);
  auto& req = spec.request;
  req.version(11);
  std::string method = "GET";
  if (const json::value* m = object->if_contains("method")) {
    if (!m->is_string() || !is_token(m->get_string())) {
      return make_unexpected(std::string("http: 'method' must be an HTTP method name"));
    }
    // Methods are case-sensitive on the wire, but `post` in a workflow means POST.
    method = m->get_string();
    std::transform(method.begin(), method.end(), method.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  }
  req.method_string(method);
  req.target(spec.url.target);
  req.set(http::field::host, spec.url.authority);
  req.set(http::field::user_agent, "troupe");
  req.set(http::field::connection, "close");  // one request per connection
  if (const json::value* headers = object->if_contains("headers")) {
    const json::object* fields = headers->if_object();
    if (fields == nullptr) {
      return make_unexpected("http: 'headers' must be an object of strings, got " +
                             std::string(json_kind_name(*headers)));
    }
    for (const auto& field : *fields) {
      const json::string* value = field.value().if_string();
      if (!is_token(field.key())) {
        return make_unexpected("http: invalid header name '" + std::string(field.key()) + "'");
      }
      if (value == nullptr) {
        return make_unexpected("http: header '" + std::string(field.key()) +
                               "' must be a string, got " +
                               std::string(json_kind_name(field.value())));
      }
      if (has_line_break(*value)) {
        return make_unexpected("http: header '" + std::string(field.key()) +
                               "' contains a line break");
      }
      req.set(std::string_view(field.key()), std::string_view(*value));
    }
  }
  if (const json::value* body = object->if_contains("body"); body != nullptr && !body->is_null()) {
    if (const json::string* text = body->if_string()) {
      req.body() = std::string(*text);
    } else {
      req.body() = to_json_text(*body);
      if (req.find(http::field::content_type) == req.end()) {
        req.set(http::field::content_type, "application/json");
      }
    }
  }
  req.prepare_payload();
  return spec;
}

/// One request in flight. Members are touched only on strand_; handlers hold shared_from_this()
/// so the operation lives until done_ has run, whoever else drops it.
class http_operation final : public operation, public std::enable_shared_from_this<http_operation> {
 public:
  http_operation(asio::io_context& io, http_spec spec, completion done)
      : policy_(std::move(spec.policy)),
        strand_(asio::make_strand(io)),
        resolver_(strand_),
        stream_(strand_),
        url_(std::move(spec.url)),
        request_(std::move(spec.request)),
        done_(std::move(done)) {
    parser_.body_limit(max_capture_bytes);
    parser_.header_limit(64 * 1024);
  }

  void start() {
    asio::post(strand_, [self = shared_from_this()] { self->resolve(); });
  }

  void cancel() override {
    asio::post(strand_, [self = shared_from_this()] {
      if (self->completed_ || self->cancelled_) {
        return;
      }
      self->cancelled_ = true;
      // Each pending step completes with operation_aborted and then reports "cancelled".
      self->resolver_.cancel();
      error_code ignored;
      self->stream_.socket().close(ignored);
    });
  }

 private:
  void resolve() {
    if (cancelled_) {
      finish(task_result::failure("cancelled"));
      return;
    }
    resolver_.async_resolve(
        url_.host, url_.port,
        asio::bind_executor(strand_, [self = shared_from_this()](
                                         error_code ec, tcp::resolver::results_type results) {
          self->on_resolve(ec, std::move(results));
        }));
  }

  void on_resolve(error_code ec, tcp::resolver::results_type results) {
    if (stopped(ec, "cannot resolve '" + url_.host + "'")) {
      return;
    }
    // Only the addresses the run's policy allows are tried: the check is on what the name
    // resolved to, so a public name pointing at a private address is refused as well.
    std::vector<tcp::endpoint> allowed;
    std::string refused;
    for (const auto& r : results) {
      const auto addr = r.endpoint().address();
      if (!policy_ || policy_->private_addresses || !non_public(addr) ||
          host_allowed(addr.to_string())) {
        allowed.push_back(r.endpoint());
      } else if (refused.empty()) {
        refused = addr.to_string();
      }
    }
    if (allowed.empty()) {
      finish(task_result::failure(
          "http: refused to connect to " + url_.authority + " (" + refused +
          "): a loopback, private or otherwise non-public address, which this run may not "
          "reach (troupe serve --allow-http-hosts)"));
      return;
    }
    stream_.async_connect(
        allowed, asio::bind_executor(
                     strand_, [self = shared_from_this()](error_code ec, const tcp::endpoint&) {
                       self->on_connect(ec);
                     }));
  }

  bool host_allowed(const std::string& address) const {
    for (const auto& h : policy_->allowed_hosts) {
      if (h == "*" || h == url_.host || h == address) {
        return true;
      }
    }
    return false;
  }

  void on_connect(error_code ec) {
    if (stopped(ec, "cannot connect to " + url_.authority)) {
      return;
    }
    http::async_write(
        stream_, request_,
        asio::bind_executor(strand_, [self = shared_from_this()](error_code ec, std::size_t) {
          self->on_write(ec);
        }));
  }

  void on_write(error_code ec) {
    if (stopped(ec, "sending the request to " + url_.authority + " failed")) {
      return;
    }
    http::async_read(
        stream_, buffer_, parser_,
        asio::bind_executor(strand_, [self = shared_from_this()](error_code ec, std::size_t) {
          self->on_read(ec);
        }));
  }

  void on_read(error_code ec) {
    if (ec == http::error::body_limit) {
      close();
      finish(task_result::failure("the response from " + url_.authority +
                                  " exceeds the 16 MiB body limit"));
      return;
    }
    if (stopped(ec, "reading the response from " + url_.authority + " failed")) {
      return;
    }
    close();
    finish(result(parser_.release()));
  }

  /// True when the operation ended here: cancelled (whatever the error code says) or failed.
  bool stopped(error_code ec, const std::string& context) {
    if (cancelled_) {
      close();
      finish(task_result::failure("cancelled"));
      return true;
    }
    if (ec) {
      close();
      finish(task_result::failure(context + ": " + ec.message()));
      return true;
    }
    return false;
  }

  static task_result result(http::response<http::string_body> response) {
    const unsigned status = response.result_int();
    std::string& text = response.body();
    if (status >= 400) {
      std::string message = "HTTP " + std::to_string(status);
      if (!trim(text).empty()) {
        message += ": " + head(trim(text));
      }
      return task_result::failure(std::move(message));
    }
    json::object headers;
    for (const auto& field : response.base()) {
      const std::string name = lowercase(field.name_string());
      const std::string_view value = field.value();
      if (json::value* existing = headers.if_contains(name)) {
        std::string joined(existing->get_string());
        joined += ", ";
        joined += value;
        *existing = std::move(joined);
      } else {
        headers[name] = value;
      }
    }
    // JSON when the server says so; text when it names another type; a guess when it is silent.
    json::value body;
    const json::value* content_type = headers.if_contains("content-type");
    const bool says_json = content_type != nullptr &&
                           lowercase(content_type->get_string()).find("json") != std::string::npos;
    if (says_json || content_type == nullptr) {
      if (auto parsed = parse_json(text)) {
        body = std::move(*parsed);
      } else {
        body = std::move(text);
      }
    } else {
      body = std::move(text);
    }
    json::object out;
    out["status"] = status;
    out["headers"] = std::move(headers);
    out["body"] = std::move(body);
    return task_result::success(std::move(out));
  }

  void close() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  /// The only place done_ runs: on strand_, so on an io_context thread, exactly once.
  void finish(task_result r) {
    if (completed_) {
      return;
    }
    completed_ = true;
    completion done = std::move(done_);
    done_ = nullptr;
    done(std::move(r));
  }

  std::shared_ptr<const task_policy> policy_;  // null: connect anywhere
  asio::strand<asio::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  beast::tcp_stream stream_;
  parsed_url url_;
  http::request<http::string_body> request_;
  beast::flat_buffer buffer_;
  http::response_parser<http::string_body> parser_;
  completion done_;
  bool cancelled_ = false;
  bool completed_ = false;
};

}  // namespace
}  // namespace detail

operation_ptr start_http(boost::asio::io_context& io, const json::value& input,
                         std::shared_ptr<const task_policy> policy, completion done) {
  auto spec = detail::parse_http_input(input);
  if (spec) {
    spec->policy = std::move(policy);
  }
  return detail::start_parsed<detail::http_operation>(io, std::move(spec), std::move(done));
}

}  // namespace troupe
