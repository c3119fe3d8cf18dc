#include "apps/http_server.hpp"

#include <array>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

namespace troupe::cli {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int hi = hex_value(s[i + 1]);
      int lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> parse_query(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!q.empty()) {
    auto amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (part.empty()) {
      continue;
    }
    auto eq = part.find('=');
    if (eq == std::string_view::npos) {
      out.emplace_back(percent_decode(part), std::string());
    } else {
      out.emplace_back(percent_decode(part.substr(0, eq)), percent_decode(part.substr(eq + 1)));
    }
  }
  return out;
}

}  // namespace

std::string_view http_request::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) {
      return v;
    }
  }
  return {};
}

const std::string* http_request::param(std::string_view name) const {
  for (const auto& [k, v] : query) {
    if (k == name) {
      return &v;
    }
  }
  return nullptr;
}

std::string error_body(std::string_view code, std::string_view message, std::string_view pointer) {
  boost::json::object e;
  e["code"] = code;
  e["message"] = message;
  if (!pointer.empty()) {
    e["pointer"] = pointer;
  }
  return boost::json::serialize(boost::json::object{{"error", std::move(e)}});
}

class session;

struct http_server::impl : std::enable_shared_from_this<impl> {
  http_server_config config;
  http_handler handler;
  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  // On its own strand: its completions, retries and close never run at the same time on two
  // HTTP threads.
  tcp::acceptor acceptor;
  std::vector<std::thread> threads;
  std::atomic<bool> accepting{true};
  std::atomic<bool> stopped{false};
  std::uint16_t bound_port = 0;

  mutable std::mutex mutex;  // guards sessions
  std::unordered_set<session*> sessions;
  std::atomic<std::size_t> open{0};
  std::atomic<std::uint64_t> accepted{0};
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::uint64_t> timed_out{0};
  std::atomic<std::size_t> stream_bytes{0};  // queued in every session's stream, not yet written
  std::atomic<std::uint64_t> streams_cut{0};

  impl(http_server_config c, http_handler h)
      : config(std::move(c)), handler(std::move(h)), work(net::make_work_guard(ioc)),
        acceptor(net::make_strand(ioc)) {}

  void do_accept();
  void close_all();
};

// One connection. Lives while an asynchronous operation or an unanswered exchange holds it. All
// of its state is touched on its strand only.
class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket socket, std::shared_ptr<http_server::impl> server)
      : server_(std::move(server)), stream_(std::move(socket)), keepalive_(stream_.get_executor()) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) {
      remote_ = ep.address().to_string();
    }
  }
  ~session() {
    std::lock_guard lock(server_->mutex);
    server_->sessions.erase(this);
    server_->open.fetch_sub(1);
  }

  void start() {
    {
      std::lock_guard lock(server_->mutex);
      server_->sessions.insert(this);
    }
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  // From the exchange, posted onto the strand.
  void respond(http_response res);
  void start_stream(std::function<void()> on_close);
  void enqueue(std::string frame);
  void end_stream();
  // From the server's stop(), posted onto the strand.
  void close();

  net::any_io_executor executor() { return stream_.get_executor(); }

 private:
  void read_header();
  void read_failed(beast::error_code ec, bool answer_malformed);
  void on_header(beast::error_code ec);
  void read_body();
  void on_body(beast::error_code ec);
  void fail_request(int status, std::string_view code, std::string_view message);
  void write(std::shared_ptr<http::response<http::string_body>> res, bool keep_alive);
  void write_next();
  void linger();
  void drain_input();
  void watch_client();
  void tick_keepalive();

  std::shared_ptr<http_server::impl> server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  net::steady_timer keepalive_;
  std::string remote_;
  bool keep_alive_ = false;
  bool closed_ = false;
  // Streaming.
  bool streaming_ = false;
  bool writing_ = false;
  bool backlog_written_ = false;  // the stream's queue has been empty once since it started
  bool ending_ = false;
  std::deque<std::string> queue_;
  std::size_t queued_bytes_ = 0;
  std::function<void()> on_close_;
  std::array<char, 512> sink_{};
};

class exchange_impl : public http_exchange {
 public:
  explicit exchange_impl(std::shared_ptr<session> s) : session_(std::move(s)) {}

  void respond(http_response response) override {
    if (answered_.exchange(true)) {
      return;
    }
    auto s = std::move(session_);
    net::post(s->executor(), [s, r = std::move(response)]() mutable { s->respond(std::move(r)); });
  }
  void start_stream(std::function<void()> on_close) override {
    if (answered_.exchange(true)) {
      return;
    }
    std::lock_guard lock(mutex_);
    stream_ = session_;  // kept weakly from now on: the stream ends with the connection
    auto s = std::move(session_);
    net::post(s->executor(),
              [s, f = std::move(on_close)]() mutable { s->start_stream(std::move(f)); });
  }
  void send(std::string frame) override {
    std::shared_ptr<session> s;
    {
      std::lock_guard lock(mutex_);
      s = stream_.lock();
    }
    if (s) {
      net::post(s->executor(), [s, f = std::move(frame)]() mutable { s->enqueue(std::move(f)); });
    }
  }
  void end_stream() override {
    std::shared_ptr<session> s;
    {
      std::lock_guard lock(mutex_);
      s = stream_.lock();
    }
    if (s) {
      net::post(s->executor(), [s] { s->end_stream(); });
    }
  }

 private:
  std::atomic<bool> answered_{false};
  std::shared_ptr<session> session_;  // until answered: the connection waits for the answer
  std::mutex mutex_;
  std::weak_ptr<session> stream_;
};

void session::read_header() {
  if (closed_ || server_->stopped) {
    return close();
  }
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(server_->config.max_header_bytes));
  parser_->body_limit(server_->config.max_body_bytes);
  stream_.expires_after(server_->config.read_timeout);
  http::async_read_header(stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, std::size_t) {
                            self->on_header(ec);
                          });
}

// A read that failed: answered (431, 413, 400) or the connection closed. While the headers are
// read a malformed request is answered 400; once the body is being read it only closes.
void session::read_failed(beast::error_code ec, bool answer_malformed) {
  if (ec == http::error::header_limit) {
    return fail_request(431, "header_too_large", "the request's headers are too large");
  }
  if (ec == http::error::body_limit) {
    return fail_request(413, "body_too_large",
                        "the request body is larger than " +
                            std::to_string(server_->config.max_body_bytes) + " bytes");
  }
  if (ec == beast::error::timeout) {
    server_->timed_out.fetch_add(1);
    return close();
  }
  if (!answer_malformed || ec == http::error::end_of_stream || ec == net::error::eof ||
      ec == net::error::connection_reset || ec == net::error::operation_aborted) {
    return close();
  }
  fail_request(400, "bad_request", "malformed HTTP request: " + ec.message());
}

void session::on_header(beast::error_code ec) {
  if (ec) {
    return read_failed(ec, true);
  }
  const auto& h = parser_->get();
  auto expect = h[http::field::expect];
  // HTTP/1.0 has no interim responses: its client sends the body anyway.
  if (!parser_->is_done() && h.version() >= 11 && beast::iequals(expect, "100-continue")) {
    if (server_->config.before_body) {
      if (auto refused = server_->config.before_body(h[http::field::authorization])) {
        keep_alive_ = false;  // the body was never read: the connection cannot be reused
        return respond(std::move(*refused));
      }
    }
    auto interim = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
    net::async_write(stream_, net::buffer(*interim),
                     [self = shared_from_this(), interim](beast::error_code wec, std::size_t) {
                       if (wec) {
                         return self->close();
                       }
                       self->read_body();
                     });
    return;
  }
  read_body();
}

void session::read_body() {
  http::async_read(stream_, buffer_, *parser_,
                   [self = shared_from_this()](beast::error_code ec, std::size_t) {
                     self->on_body(ec);
                   });
}

void session::on_body(beast::error_code ec) {
  if (ec) {
    return read_failed(ec, false);
  }
  stream_.expires_never();
  auto msg = parser_->release();
  parser_.reset();
  keep_alive_ = msg.keep_alive();
  http_request req;
  req.method = std::string(msg.method_string());
  req.target = std::string(msg.target());
  auto q = req.target.find('?');
  req.path = req.target.substr(0, q);
  if (q != std::string::npos) {
    req.query = parse_query(std::string_view(req.target).substr(q + 1));
  }
  for (const auto& f : msg) {
    req.headers.emplace_back(lower(f.name_string()), std::string(f.value()));
  }
  req.body = std::move(msg.body());
  req.remote = remote_;
  auto ex = std::make_shared<exchange_impl>(shared_from_this());
  try {
    server_->handler(ex, std::move(req));
  } catch (const std::exception& e) {
    ex->respond({500, "application/json", error_body("internal", e.what()), {}});
  }
}

void session::fail_request(int status, std::string_view code, std::string_view message) {
  auto res = std::make_shared<http::response<http::string_body>>(
      static_cast<http::status>(status), 11);
  res->set(http::field::content_type, "application/json");
  res->body() = error_body(code, message);
  write(std::move(res), false);
}

void session::respond(http_response r) {
  if (closed_) {
    return;
  }
  auto res = std::make_shared<http::response<http::string_body>>(
      static_cast<http::status>(r.status), 11);
  res->set(http::field::server, "troupe");
  res->set(http::field::content_type, r.content_type);
  for (auto& [k, v] : r.headers) {
    res->set(k, v);
  }
  res->body() = std::move(r.body);
  write(std::move(res), keep_alive_ && !server_->stopped);
}

void session::write(std::shared_ptr<http::response<http::string_body>> res, bool keep_alive) {
  res->keep_alive(keep_alive);
  res->prepare_payload();
  stream_.expires_after(server_->config.read_timeout);
  http::async_write(stream_, *res,
                    [self = shared_from_this(), res, keep_alive](beast::error_code ec, std::size_t) {
                      if (ec) {
                        return self->close();
                      }
                      if (!keep_alive) {
                        return self->linger();
                      }
                      self->read_header();
                    });
}

// After a final response: stop sending, and read (and drop) what the client still sends until
// it closes or read_timeout passes, so that an answer given before a body was read (413) is not
// lost to a reset of the connection while the client is still writing.
void session::linger() {
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) {
    return close();
  }
  stream_.expires_after(server_->config.read_timeout);
  drain_input();
}

void session::drain_input() {
  stream_.async_read_some(net::buffer(sink_),
                          [self = shared_from_this()](beast::error_code ec, std::size_t) {
                            if (ec) {
                              return self->close();
                            }
                            self->drain_input();
                          });
}

void session::start_stream(std::function<void()> on_close) {
  on_close_ = std::move(on_close);
  if (closed_) {
    auto f = std::move(on_close_);
    on_close_ = nullptr;
    if (f) {
      f();
    }
    return;
  }
  streaming_ = true;
  stream_.expires_never();
  queue_.emplace_back(
      "HTTP/1.1 200 OK\r\nServer: troupe\r\nContent-Type: text/event-stream\r\n"
      "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n");
  queued_bytes_ += queue_.back().size();
  server_->stream_bytes.fetch_add(queue_.back().size());
  write_next();
  watch_client();
  tick_keepalive();
}

void session::enqueue(std::string frame) {
  if (closed_ || !streaming_ || ending_) {
    return;
  }
  // Too slow a reader (behind by this stream's bound, or the frame would take all streams past
  // theirs): it is closed, reconnects and replays from the log. The stream's first backlog
  // (a replay, queued at once) is exempt from the stream's own bound until it has been
  // written: that is no sign of a slow reader, and a client could otherwise never replay a
  // history larger than the bound. The write timeout and the total bound still hold.
  const std::size_t total = server_->stream_bytes.fetch_add(frame.size()) + frame.size();
  queued_bytes_ += frame.size();
  if ((backlog_written_ && queued_bytes_ - frame.size() >= server_->config.max_stream_buffer) ||
      total > server_->config.max_stream_buffers_total) {
    server_->streams_cut.fetch_add(1);
    return close();
  }
  queue_.push_back(std::move(frame));
  if (!writing_) {
    write_next();
  }
}

void session::end_stream() {
  if (closed_ || !streaming_) {
    return;
  }
  ending_ = true;
  if (!writing_ && queue_.empty()) {
    close();
  }
}

void session::write_next() {
  if (closed_) {
    return;
  }
  if (queue_.empty()) {
    writing_ = false;
    backlog_written_ = true;
    stream_.expires_never();
    if (ending_) {
      close();
    }
    return;
  }
  writing_ = true;
  // A frame must be written within the read timeout: a client that stops reading is cut off
  // (the stream's reads go to the socket itself, so this deadline covers the write only).
  stream_.expires_after(server_->config.read_timeout);
  net::async_write(stream_, net::buffer(queue_.front()),
                   [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                     if (self->closed_) {
                       return;  // close() dropped the queue and its bytes
                     }
                     if (ec) {
                       if (ec == beast::error::timeout) {
                         self->server_->timed_out.fetch_add(1);
                         self->server_->streams_cut.fetch_add(1);
                       }
                       return self->close();
                     }
                     self->queued_bytes_ -= n;
                     self->server_->stream_bytes.fetch_sub(n);
                     self->queue_.pop_front();
                     self->write_next();
                   });
}

// A streaming client sends nothing more: a read that ends means it went away.
void session::watch_client() {
  stream_.socket().async_read_some(
      net::buffer(sink_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
        if (ec) {
          return self->close();
        }
        self->watch_client();
      });
}

void session::tick_keepalive() {
  keepalive_.expires_after(server_->config.stream_keepalive);
  keepalive_.async_wait([self = shared_from_this()](beast::error_code ec) {
    if (ec || self->closed_) {
      return;
    }
    self->enqueue(": keep-alive\n\n");
    self->tick_keepalive();
  });
}

void session::close() {
  if (closed_) {
    return;
  }
  closed_ = true;
  keepalive_.cancel();
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
  stream_.socket().close(ec);
  queue_.clear();
  server_->stream_bytes.fetch_sub(queued_bytes_);
  queued_bytes_ = 0;
  if (auto f = std::move(on_close_)) {
    on_close_ = nullptr;
    f();
  }
}

void http_server::impl::do_accept() {
  acceptor.async_accept(
      net::make_strand(ioc), [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
        if (!self->accepting || ec == net::error::operation_aborted) {
          return;  // stopped
        }
        if (ec) {
          // Out of file descriptors (EMFILE), or the peer left before it was accepted: try
          // again shortly, on a timer; accepting must not end for good.
          auto retry = std::make_shared<net::steady_timer>(self->acceptor.get_executor(),
                                                           std::chrono::milliseconds(50));
          retry->async_wait([self, retry](beast::error_code) {
            if (self->accepting) {
              self->do_accept();
            }
          });
          return;
        }
        self->accepted.fetch_add(1);
        if (self->open.load() >= self->config.max_connections) {
          self->refused.fetch_add(1);
          auto sock = std::make_shared<tcp::socket>(std::move(socket));
          auto text = std::make_shared<std::string>(
              "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
              "Connection: close\r\nContent-Length: " +
              std::to_string(error_body("too_many_connections", "too many open connections")
                                 .size()) +
              "\r\n\r\n" + error_body("too_many_connections", "too many open connections"));
          net::async_write(*sock, net::buffer(*text), [sock, text](beast::error_code, std::size_t) {
            beast::error_code ignored;
            sock->shutdown(tcp::socket::shutdown_both, ignored);
            sock->close(ignored);
          });
        } else {
          self->open.fetch_add(1);
          std::make_shared<session>(std::move(socket), self)->start();
        }
        self->do_accept();
      });
}

void http_server::impl::close_all() {
  std::vector<std::shared_ptr<session>> live;
  {
    std::lock_guard lock(mutex);
    for (session* s : sessions) {
      // A session being destroyed has no owner left: skip it (weak_from_this is empty then).
      if (auto p = s->weak_from_this().lock()) {
        live.push_back(std::move(p));
      }
    }
  }
  for (auto& s : live) {
    net::post(s->executor(), [s] { s->close(); });
  }
}

http_server::http_server(http_server_config config, http_handler handler)
    : impl_(std::make_shared<impl>(std::move(config), std::move(handler))) {
  auto& m = *impl_;
  beast::error_code ec;
  auto address = net::ip::make_address(m.config.host, ec);
  if (ec) {
    throw std::runtime_error("cannot listen on '" + m.config.host + "': not an IP address");
  }
  tcp::endpoint ep(address, m.config.port);
  m.acceptor.open(ep.protocol(), ec);
  if (!ec) {
    m.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  }
  if (!ec) {
    m.acceptor.bind(ep, ec);
  }
  if (!ec) {
    m.acceptor.listen(net::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    throw std::runtime_error("cannot listen on " + m.config.host + ":" +
                             std::to_string(m.config.port) + ": " + ec.message());
  }
  m.bound_port = m.acceptor.local_endpoint().port();
  m.do_accept();
  for (int i = 0; i < std::max(1, m.config.threads); ++i) {
    m.threads.emplace_back([p = impl_.get()] { p->ioc.run(); });
  }
}

http_server::~http_server() { stop(); }

std::uint16_t http_server::port() const { return impl_->bound_port; }

void http_server::stop_accepting() {
  if (impl_->accepting.exchange(false)) {
    net::post(impl_->acceptor.get_executor(), [p = impl_] {
      beast::error_code ec;
      p->acceptor.close(ec);
    });
  }
}

void http_server::stop() {
  if (impl_->stopped.exchange(true)) {
    return;
  }
  stop_accepting();
  impl_->close_all();
  impl_->work.reset();
  // Sessions still waiting for an answer hold no operation: once every connection is closed
  // and the acceptor is gone, the threads run out of work and return.
  for (auto& t : impl_->threads) {
    if (t.joinable()) {
      t.join();
    }
  }
}

http_server_stats http_server::stats() const {
  http_server_stats s;
  s.open_connections = impl_->open.load();
  s.stream_bytes_waiting = impl_->stream_bytes.load();
  s.streams_cut = impl_->streams_cut.load();
  s.accepted = impl_->accepted.load();
  s.refused_connections = impl_->refused.load();
  s.timed_out = impl_->timed_out.load();
  return s;
}

}  // namespace troupe::cli
