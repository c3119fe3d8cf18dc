#include "apps/http_target.hpp"

#include <chrono>
#include <deque>
#include <optional>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace troupe::cli {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

struct parsed_url {
  std::string host;
  std::string port;
};

parsed_url parse_url(const std::string& url) {
  constexpr std::string_view scheme = "http://";
  if (url.rfind(scheme, 0) != 0) {
    throw std::runtime_error("--target must be http://HOST:PORT, not '" + url + "'");
  }
  std::string rest = url.substr(scheme.size());
  while (!rest.empty() && rest.back() == '/') {
    rest.pop_back();
  }
  if (rest.find('/') != std::string::npos) {
    throw std::runtime_error("--target takes no path: http://HOST:PORT");
  }
  auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon + 1 == rest.size()) {
    return {rest, "80"};
  }
  return {rest.substr(0, colon), rest.substr(colon + 1)};
}

// The first error of the service's answer as validation errors (with their pointers).
validation_errors errors_of(int status, const std::string& body) {
  validation_errors out;
  boost::system::error_code ec;
  auto doc = boost::json::parse(body, ec);
  if (!ec && doc.is_object()) {
    if (auto* e = doc.as_object().if_contains("error"); e && e->is_object()) {
      const auto& eo = e->as_object();
      if (auto* list = eo.if_contains("errors"); list && list->is_array()) {
        for (const auto& item : list->as_array()) {
          if (item.is_object()) {
            const auto* p = item.as_object().if_contains("pointer");
            const auto* m = item.as_object().if_contains("message");
            out.push_back({p && p->is_string() ? std::string(p->as_string()) : std::string(),
                           m && m->is_string() ? std::string(m->as_string()) : std::string()});
          }
        }
      }
      if (out.empty()) {
        const auto* p = eo.if_contains("pointer");
        const auto* m = eo.if_contains("message");
        out.push_back({p && p->is_string() ? std::string(p->as_string()) : std::string(),
                       m && m->is_string() ? std::string(m->as_string()) : body});
      }
      return out;
    }
  }
  out.push_back({"", "HTTP " + std::to_string(status) + ": " + body.substr(0, 300)});
  return out;
}

run_outcome outcome_of(int status, const std::string& body) {
  if (status != 200) {
    auto e = errors_of(status, body);
    return {false, "HTTP " + std::to_string(status) + ": " + (e.empty() ? body : e[0].message)};
  }
  boost::system::error_code ec;
  auto doc = boost::json::parse(body, ec);
  if (ec || !doc.is_object()) {
    return {false, "the service answered with something that is not JSON"};
  }
  const auto* s = doc.as_object().if_contains("status");
  if (s && s->is_string() && s->as_string() == "succeeded") {
    return {true, {}};
  }
  const auto* e = doc.as_object().if_contains("error");
  return {false, std::string("run ") + (s && s->is_string() ? s->as_string().c_str() : "?") +
                     (e && e->is_string() ? std::string(": ") + e->as_string().c_str() : "")};
}

}  // namespace

// How long a kept-alive connection may idle before it is replaced rather than reused.
constexpr std::chrono::seconds max_idle{1};

struct http_target::impl : std::enable_shared_from_this<impl> {
  parsed_url where;
  std::string key;
  std::size_t max_connections;
  std::string workflow_body;  // what each run posts

  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::thread thread;
  tcp::resolver::results_type endpoints;

  struct conn : std::enable_shared_from_this<conn> {
    std::shared_ptr<impl> owner;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    http::request<http::string_body> req;
    http::response<http::string_body> res;
    completion_callback done;
    bool connected = false;
    std::chrono::steady_clock::time_point last_answer;  // when its last response ended

    conn(std::shared_ptr<impl> o)
        : owner(std::move(o)), stream(net::make_strand(owner->ioc)) {}

    void run(completion_callback cb) {
      done = std::move(cb);
      req = {http::verb::post, "/v1/runs", 11};
      req.set(http::field::host, owner->where.host);
      req.set(http::field::content_type, "application/json");
      if (!owner->key.empty()) {
        req.set(http::field::authorization, "Bearer " + owner->key);
      }
      req.keep_alive(true);
      req.body() = owner->workflow_body;
      req.prepare_payload();
      // A connection idle for a while may have been closed by the server (its idle timeout,
      // 10 s by default): a POST on it could fail without the server having seen it, and a
      // POST is not retried. Such a connection is replaced instead of reused.
      if (connected && std::chrono::steady_clock::now() - last_answer > max_idle) {
        beast::error_code ignored;
        stream.socket().close(ignored);
        connected = false;
      }
      if (connected) {
        return send();
      }
      stream.async_connect(owner->endpoints, [self = shared_from_this()](
                                                 beast::error_code ec, const tcp::endpoint&) {
        if (ec) {
          return self->finish({false, "cannot connect: " + ec.message()});
        }
        self->connected = true;
        self->send();
      });
    }

    void send() {
      http::async_write(stream, req, [self = shared_from_this()](beast::error_code ec, std::size_t) {
        if (ec) {
          self->connected = false;
          return self->finish({false, "request failed: " + ec.message()});
        }
        self->res = {};
        http::async_read(self->stream, self->buffer, self->res,
                         [self](beast::error_code rec, std::size_t) {
                           if (rec) {
                             self->connected = false;
                             return self->finish({false, "no answer: " + rec.message()});
                           }
                           self->last_answer = std::chrono::steady_clock::now();
                           if (!self->res.keep_alive()) {
                             beast::error_code ignored;
                             self->stream.socket().close(ignored);
                             self->connected = false;
                           }
                           self->finish(outcome_of(self->res.result_int(), self->res.body()));
                         });
      });
    }

    void finish(run_outcome o) {
      if (!connected) {
        beast::error_code ignored;
        stream.socket().close(ignored);
      }
      auto cb = std::move(done);
      done = nullptr;
      cb(o);
      owner->released(shared_from_this());
    }
  };

  std::mutex mutex;
  std::vector<std::shared_ptr<conn>> idle;
  std::deque<completion_callback> waiting;
  std::size_t opened = 0;
  bool stopped = false;

  void released(const std::shared_ptr<conn>& c) {
    completion_callback next;
    {
      std::lock_guard lock(mutex);
      if (!waiting.empty() && !stopped) {
        next = std::move(waiting.front());
        waiting.pop_front();
      } else {
        idle.push_back(c);
        return;
      }
    }
    c->run(std::move(next));
  }

  // A blocking request on a connection of its own (setup and the checking run).
  std::pair<int, std::string> request(http::verb verb, const std::string& target,
                                      const std::string& body) {
    net::io_context local;
    beast::tcp_stream s(local);
    tcp::resolver r(local);
    s.connect(r.resolve(where.host, where.port));
    http::request<http::string_body> q{verb, target, 11};
    q.set(http::field::host, where.host);
    q.set(http::field::content_type, "application/json");
    if (!key.empty()) {
      q.set(http::field::authorization, "Bearer " + key);
    }
    q.body() = body;
    q.prepare_payload();
    http::write(s, q);
    beast::flat_buffer b;
    http::response<http::string_body> res;
    http::read(s, b, res);
    beast::error_code ignored;
    s.socket().shutdown(tcp::socket::shutdown_both, ignored);
    return {res.result_int(), res.body()};
  }
};

http_target::http_target(const std::string& url, std::string api_key, std::size_t connections)
    : impl_(std::make_shared<impl>()) {
  impl_->where = parse_url(url);
  impl_->key = std::move(api_key);
  impl_->max_connections = std::max<std::size_t>(1, connections);
  tcp::resolver r(impl_->ioc);
  beast::error_code ec;
  impl_->endpoints = r.resolve(impl_->where.host, impl_->where.port, ec);
  if (ec) {
    throw std::runtime_error("cannot resolve " + impl_->where.host + ": " + ec.message());
  }
  impl_->work.emplace(net::make_work_guard(impl_->ioc));
  impl_->thread = std::thread([p = impl_.get()] { p->ioc.run(); });
}

http_target::~http_target() { stop(); }

expected<persistence_mode, std::string> http_target::service_mode() {
  std::pair<int, std::string> r;
  try {
    r = impl_->request(http::verb::get, "/healthz", {});
  } catch (const std::exception& e) {
    return make_unexpected(std::string(e.what()));
  }
  boost::system::error_code ec;
  auto doc = boost::json::parse(r.second, ec);
  persistence_mode m{};
  if (r.first != 200 || ec || !doc.is_object() || !doc.as_object().if_contains("mode") ||
      !doc.at("mode").is_string() ||
      !parse_persistence_mode(std::string(doc.at("mode").as_string()), m)) {
    return make_unexpected("not a troupe service (GET /healthz answered " +
                           std::to_string(r.first) + ")");
  }
  return m;
}

expected<std::string, validation_errors> http_target::use_workflow(std::string_view json_text,
                                                                   json::object inputs) {
  std::pair<int, std::string> reg;
  try {
    reg = impl_->request(http::verb::post, "/v1/workflows", std::string(json_text));
  } catch (const std::exception& e) {
    return make_unexpected(validation_errors{{"", std::string("cannot reach the service: ") +
                                                      e.what()}});
  }
  if (reg.first != 201) {
    return make_unexpected(errors_of(reg.first, reg.second));
  }
  auto doc = boost::json::parse(reg.second);
  std::string name(doc.at("name").as_string());
  std::string version(doc.at("version").as_string());
  impl_->workflow_body = boost::json::serialize(
      boost::json::object{{"workflow", name},
                          {"version", version},
                          {"inputs", std::move(inputs)},
                          {"response", "wait"},
                          {"wait_ms", 600000}});
  return name;
}

expected<run_outcome, validation_errors> http_target::check() {
  std::pair<int, std::string> r;
  try {
    r = impl_->request(http::verb::post, "/v1/runs", impl_->workflow_body);
  } catch (const std::exception& e) {
    return make_unexpected(validation_errors{{"", std::string("cannot reach the service: ") +
                                                      e.what()}});
  }
  if (r.first == 400) {
    return make_unexpected(errors_of(r.first, r.second));
  }
  return outcome_of(r.first, r.second);
}

bool http_target::start_run(completion_callback done, std::string& error) {
  std::shared_ptr<impl::conn> c;
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->stopped) {
      error = "the target is stopped";
      return false;
    }
    if (!impl_->idle.empty()) {
      c = std::move(impl_->idle.back());
      impl_->idle.pop_back();
    } else if (impl_->opened < impl_->max_connections) {
      ++impl_->opened;
      c = std::make_shared<impl::conn>(impl_);
    } else {
      impl_->waiting.push_back(std::move(done));
      return true;
    }
  }
  net::post(c->stream.get_executor(), [c, d = std::move(done)]() mutable { c->run(std::move(d)); });
  return true;
}

void http_target::stop() {
  std::deque<completion_callback> never_sent;
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->stopped) {
      return;
    }
    impl_->stopped = true;
    never_sent.swap(impl_->waiting);
    for (auto& c : impl_->idle) {
      net::post(c->stream.get_executor(), [c] {
        beast::error_code ignored;
        c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        c->stream.socket().close(ignored);
      });
    }
    impl_->idle.clear();
  }
  // Runs still waiting for a connection end now, as failures, so no caller waits for them.
  for (auto& cb : never_sent) {
    cb({false, "not started: the target is stopped"});
  }
  impl_->work.reset();
  if (impl_->thread.joinable()) {
    impl_->thread.join();
  }
}

}  // namespace troupe::cli
