#define BOOST_TEST_MODULE actors_http
#include <boost/test/unit_test.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "actors/builtin/operation.hpp"

namespace {

using namespace std::chrono_literals;
namespace json = boost::json;
namespace utf = boost::unit_test;
namespace net = boost::asio;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
using troupe::task_result;

/// An io_context run by a thread the test owns, like the runtime's I/O threads.
class io_thread {
 public:
  io_thread() : guard_(io_.get_executor()), thread_([this] { io_.run(); }) {}
  ~io_thread() {
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  net::io_context& io() { return io_; }

 private:
  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> guard_;
  std::thread thread_;
};

/// A small HTTP server on 127.0.0.1 with its own io_context and thread. Routes:
///   /json     200, a JSON document
///   /text     200, text/plain
///   /echo     200, the request body with its content type, the method in x-method
///   /headers  200, the request's headers as a JSON object with lowercased names
///   /missing  404 with a text body
///   /hang     reads the request and never answers (hang_seen() fires when it arrived)
class test_server {
 public:
  test_server() : acceptor_(io_, {net::ip::make_address("127.0.0.1"), 0}) {
    net::co_spawn(io_, accept_loop(), net::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~test_server() {
    io_.stop();
    thread_.join();
  }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()) + path;
  }
  std::shared_future<void> hang_seen() const { return hang_seen_; }
  unsigned short port() const { return acceptor_.local_endpoint().port(); }
  /// Requests read so far.
  std::size_t requests() const { return requests_.load(); }

 private:
  net::awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(net::as_tuple(net::use_awaitable));
      if (ec) {
        co_return;
      }
      net::co_spawn(io_, serve(std::move(socket)), net::detached);
    }
  }

  net::awaitable<void> serve(tcp::socket socket) {
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> req;
    auto [ec, n] =
        co_await http::async_read(socket, buffer, req, net::as_tuple(net::use_awaitable));
    if (ec) {
      co_return;
    }
    ++requests_;
    http::response<http::string_body> res{http::status::ok, 11};
    const std::string target(req.target());
    if (target == "/json") {
      res.set(http::field::content_type, "application/json; charset=utf-8");
      res.body() = R"({"greeting": "hello", "n": 3})";
    } else if (target == "/text") {
      res.set(http::field::content_type, "text/plain");
      res.body() = "just text";
    } else if (target == "/echo") {
      auto type = req.find(http::field::content_type);
      res.set(http::field::content_type,
              type == req.end() ? std::string("text/plain") : std::string(type->value()));
      res.set("X-Method", std::string(req.method_string()));
      res.body() = req.body();
    } else if (target == "/headers") {
      json::object headers;
      for (const auto& field : req) {
        std::string name(field.name_string());
        for (auto& c : name) {
          c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        }
        headers[name] = std::string(field.value());
      }
      res.set(http::field::content_type, "application/json");
      res.body() = json::serialize(headers);
    } else if (target == "/hang") {
      hang_promise_.set_value();
      // Wait for the client to go away: a second request never comes.
      http::request<http::string_body> next;
      co_await http::async_read(socket, buffer, next, net::as_tuple(net::use_awaitable));
      co_return;
    } else {
      res.result(http::status::not_found);
      res.set(http::field::content_type, "text/plain");
      res.body() = "no such page: " + target;
    }
    res.prepare_payload();
    co_await http::async_write(socket, res, net::as_tuple(net::use_awaitable));
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_send, ignored);
  }

  net::io_context io_;
  tcp::acceptor acceptor_;
  std::atomic<std::size_t> requests_{0};
  std::promise<void> hang_promise_;
  std::shared_future<void> hang_seen_ = hang_promise_.get_future().share();
  std::thread thread_;
};

/// The result of an operation, delivered by its completion. The promise is shared with the
/// callback so that a test giving up at its deadline leaves nothing dangling.
struct pending {
  std::shared_ptr<std::promise<task_result>> promise =
      std::make_shared<std::promise<task_result>>();
  std::future<task_result> future = promise->get_future();
  std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);

  troupe::completion callback() {
    return [promise = promise, calls = calls](task_result r) {
      if (calls->fetch_add(1) == 0) {
        promise->set_value(std::move(r));
      }
    };
  }
  task_result get(std::chrono::seconds deadline = 20s) {
    BOOST_TEST_REQUIRE((future.wait_for(deadline) == std::future_status::ready),
                       "the operation did not complete");
    return future.get();
  }
};

task_result run_http(const json::value& input,
                     std::shared_ptr<const troupe::task_policy> policy = nullptr) {
  io_thread io;
  pending p;
  auto op = troupe::start_http(io.io(), input, std::move(policy), p.callback());
  return p.get();
}

/// A port on 127.0.0.1 that nobody listens on: bound, then released.
unsigned short closed_port() {
  net::io_context io;
  tcp::acceptor acceptor(io, {net::ip::make_address("127.0.0.1"), 0});
  return acceptor.local_endpoint().port();
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_get_of_a_json_resource_yields_the_parsed_body, *utf::timeout(30)) {
  test_server server;
  json::object input;
  input["url"] = server.url("/json");
  const auto r = run_http(input);
  BOOST_TEST_REQUIRE(r.ok, r.error);
  BOOST_TEST(r.output.at("status").to_number<int>() == 200);
  BOOST_TEST(r.output.at("body") == json::parse(R"({"greeting": "hello", "n": 3})"));
  BOOST_TEST(r.output.at("headers").at("content-type") == "application/json; charset=utf-8");
}

BOOST_AUTO_TEST_CASE(a_text_response_body_stays_text, *utf::timeout(30)) {
  test_server server;
  json::object input;
  input["url"] = server.url("/text");
  const auto r = run_http(input);
  BOOST_TEST_REQUIRE(r.ok, r.error);
  BOOST_TEST(r.output.at("body") == "just text");
}

BOOST_AUTO_TEST_CASE(a_post_with_a_json_body_is_sent_as_application_json, *utf::timeout(30)) {
  test_server server;
  json::object input;
  input["method"] = "post";
  input["url"] = server.url("/echo");
  input["body"] = json::parse(R"({"name": "troupe", "tags": [1, 2]})");
  const auto r = run_http(input);
  BOOST_TEST_REQUIRE(r.ok, r.error);
  BOOST_TEST(r.output.at("headers").at("x-method") == "POST");
  BOOST_TEST(r.output.at("headers").at("content-type") == "application/json");
  BOOST_TEST(r.output.at("body") == json::parse(R"({"name": "troupe", "tags": [1, 2]})"));
}

BOOST_AUTO_TEST_CASE(a_string_body_is_sent_as_is, *utf::timeout(30)) {
  test_server server;
  json::object input;
  input["method"] = "PUT";
  input["url"] = server.url("/echo");
  input["body"] = "plain words, not JSON";
  input["headers"] = json::object{{"Content-Type", "text/x-words"}};
  const auto r = run_http(input);
  BOOST_TEST_REQUIRE(r.ok, r.error);
  BOOST_TEST(r.output.at("headers").at("x-method") == "PUT");
  BOOST_TEST(r.output.at("headers").at("content-type") == "text/x-words");
  BOOST_TEST(r.output.at("body") == "plain words, not JSON");
}

BOOST_AUTO_TEST_CASE(request_headers_reach_the_server, *utf::timeout(30)) {
  test_server server;
  json::object input;
  input["url"] = server.url("/headers");
  input["headers"] = json::object{{"X-Trace-Id", "abc-123"}, {"Accept", "application/json"}};
  const auto r = run_http(input);
  BOOST_TEST_REQUIRE(r.ok, r.error);
  const auto& seen = r.output.at("body");
  BOOST_TEST(seen.at("x-trace-id") == "abc-123");
  BOOST_TEST(seen.at("accept") == "application/json");
  BOOST_TEST(seen.at("host").as_string().starts_with("127.0.0.1:"));
}

BOOST_AUTO_TEST_CASE(a_404_fails_with_the_body_in_the_error, *utf::timeout(30)) {
  test_server server;
  json::object input;
  input["url"] = server.url("/missing?x=1");
  const auto r = run_http(input);
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error == "HTTP 404: no such page: /missing?x=1");
}

BOOST_AUTO_TEST_CASE(a_refused_connection_fails_with_the_network_error, *utf::timeout(30)) {
  json::object input;
  input["url"] = "http://127.0.0.1:" + std::to_string(closed_port()) + "/";
  const auto r = run_http(input);
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error.find("cannot connect to 127.0.0.1:") == 0u, r.error);
  BOOST_TEST(r.error.find("Connection refused") != std::string::npos, r.error);
}

BOOST_AUTO_TEST_CASE(https_is_rejected, *utf::timeout(30)) {
  const auto r = run_http(json::parse(R"({"url": "https://example.com/"})"));
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error.find("https is not supported") == 0u, r.error);
}

BOOST_AUTO_TEST_CASE(bad_input_fails_naming_the_problem, *utf::timeout(30)) {
  const auto unknown = run_http(json::parse(R"({"url": "http://x/", "header": {}})"));
  BOOST_TEST(unknown.error.find("unknown field 'header'") != std::string::npos, unknown.error);
  const auto no_url = run_http(json::parse(R"({"method": "GET"})"));
  BOOST_TEST(no_url.error == "http: 'url' (a string) is required");
  const auto bad_port = run_http(json::parse(R"({"url": "http://127.0.0.1:99999/"})"));
  BOOST_TEST(bad_port.error.find("bad port") != std::string::npos, bad_port.error);
  const auto injected =
      run_http(json::parse(R"({"url": "http://x/", "headers": {"A": "b\r\nEvil: 1"}})"));
  BOOST_TEST(injected.error.find("line break") != std::string::npos, injected.error);
  BOOST_TEST(!unknown.ok);
  BOOST_TEST(!no_url.ok);
  BOOST_TEST(!bad_port.ok);
  BOOST_TEST(!injected.ok);
}

BOOST_AUTO_TEST_CASE(cancel_while_the_server_never_answers_completes_with_cancelled,
                     *utf::timeout(30)) {
  test_server server;
  io_thread io;
  pending p;
  json::object input;
  input["url"] = server.url("/hang");
  auto op = troupe::start_http(io.io(), input, nullptr, p.callback());
  BOOST_TEST_REQUIRE((server.hang_seen().wait_for(20s) == std::future_status::ready));
  BOOST_TEST((p.future.wait_for(0s) == std::future_status::timeout));
  op->cancel();
  op->cancel();
  const auto r = p.get();
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error == "cancelled");
  op->cancel();  // after completion: nothing happens

  // Anything queued behind the cancels has run once this request completes.
  pending marker;
  json::object again;
  again["url"] = server.url("/json");
  auto next = troupe::start_http(io.io(), again, nullptr, marker.callback());
  BOOST_TEST(marker.get().ok);
  BOOST_TEST(p.calls->load() == 1);
}

BOOST_AUTO_TEST_CASE(cancel_right_after_start_completes_with_cancelled, *utf::timeout(30)) {
  test_server server;
  io_thread io;
  pending p;
  json::object input;
  input["url"] = server.url("/json");
  auto op = troupe::start_http(io.io(), input, nullptr, p.callback());
  op->cancel();
  const auto r = p.get();
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error == "cancelled");
}

// A restricted run (troupe serve's API workflows) may not reach loopback or private addresses
// unless its policy names the host: the check is on the resolved address.
BOOST_AUTO_TEST_CASE(a_policy_keeps_requests_off_non_public_addresses, *utf::timeout(30)) {
  test_server server;
  auto strict = std::make_shared<troupe::task_policy>();
  json::object input;
  input["url"] = server.url("/json");  // 127.0.0.1
  auto refused = run_http(input, strict);
  BOOST_TEST(!refused.ok);
  BOOST_TEST(refused.error.find("refused to connect") != std::string::npos, refused.error);
  BOOST_TEST(server.requests() == 0u);  // nothing reached the server
  json::object by_name;
  by_name["url"] = "http://localhost:" + std::to_string(server.port()) + "/json";
  BOOST_TEST(!run_http(by_name, strict).ok);  // a name resolving to loopback is no better
  // Addresses that reach a private IPv4 address in another form, and other non-public ones;
  // all refused before any connection is tried.
  for (const char* host : {"[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]",
                           "[2002:7f00:1::]", "[::7f00:1]", "[64:ff9b:1::1]", "[2001::1]",
                           "[fd00::1]", "[fe80::1]", "[::1]", "0.0.0.0", "169.254.169.254",
                           "10.1.2.3", "100.64.0.1", "192.168.1.1", "172.16.0.1"}) {
    json::object odd;
    odd["url"] = std::string("http://") + host + ":" + std::to_string(server.port()) + "/json";
    auto r = run_http(odd, strict);
    BOOST_TEST(!r.ok, host);
    BOOST_TEST(r.error.find("refused to connect") != std::string::npos, host << ": " << r.error);
  }

  auto listed = std::make_shared<troupe::task_policy>();
  listed->allowed_hosts = {"127.0.0.1"};
  auto ok = run_http(input, listed);
  BOOST_TEST(ok.ok, ok.error);
  auto open = std::make_shared<troupe::task_policy>();
  open->private_addresses = true;
  BOOST_TEST(run_http(input, open).ok);
  BOOST_TEST(run_http(input).ok);  // no policy: unrestricted
}
