#pragma once

// The HTTP/1.1 server under `troupe serve`: Boost.Beast on its own Asio threads. This header
// includes no Beast or Asio headers: the service's routes (apps/service.cpp) see requests and
// answer them through the small interface below, from any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe::cli {

/// One request, whole (headers and body read). Header names are lower case.
struct http_request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: path and query
  std::string path;    // the target up to '?', percent-decoding not applied
  std::vector<std::pair<std::string, std::string>> query;   // decoded
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;
  std::string remote;  // the peer's address

  /// The first header of that (lower-case) name, or empty.
  std::string_view header(std::string_view name) const;
  /// The first query parameter of that name, or nullptr.
  const std::string* param(std::string_view name) const;
};

struct http_response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
};

/// The answer side of one request. Thread-safe: any thread may answer (an engine callback, a
/// timer); the work is posted to the connection's own executor. Exactly one of respond() or
/// start_stream() takes effect; later calls are ignored.
class http_exchange {
 public:
  virtual ~http_exchange() = default;
  /// Sends a complete response; the connection then reads its next request (keep-alive).
  virtual void respond(http_response response) = 0;
  /// Starts a Server-Sent Events stream (200, text/event-stream); the connection is closed when
  /// the stream ends. `on_close` runs once when the stream ends for any reason (end_stream(), the
  /// client went away, a write failed, the server stops, or the client reads too slowly: more
  /// than the server's stream buffer waiting), on the connection's executor.
  virtual void start_stream(std::function<void()> on_close) = 0;
  /// Queues text for the stream (an SSE frame: "id: ...\nevent: ...\ndata: ...\n\n").
  virtual void send(std::string frame) = 0;
  /// Ends the stream after what is queued has been written.
  virtual void end_stream() = 0;
};

using http_handler =
    std::function<void(const std::shared_ptr<http_exchange>& exchange, http_request request)>;

struct http_server_config {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;  // 0: any free port (see http_server::port())
  int threads = 1;
  std::size_t max_body_bytes = 1 << 20;     // larger: 413
  std::size_t max_header_bytes = 16 << 10;  // larger: 431
  std::size_t max_connections = 10000;      // more: 503 and close
  /// A request (its headers, then its body) must arrive within this long from the moment the
  /// connection is ready for it, and an idle keep-alive connection is closed after it: a slow
  /// client (a header byte a second) is cut off without holding a thread. A response must be
  /// written within it too.
  std::chrono::milliseconds read_timeout{std::chrono::seconds(10)};
  /// A comment line is written to every open event stream this often.
  std::chrono::milliseconds stream_keepalive{std::chrono::seconds(15)};
  /// A stream whose client reads too slowly to keep this many bytes from piling up is closed
  /// (the client reconnects with Last-Event-ID and the rest is replayed from the log). A frame
  /// is queued whatever its size when less than this is waiting, so every frame can be sent.
  std::size_t max_stream_buffer = 8 << 20;
  /// The same bound over all streams together: a frame that would take the bytes waiting in
  /// every stream past it closes its stream instead (that client reconnects and replays).
  std::size_t max_stream_buffers_total = 256 << 20;
  /// Asked, with the request's Authorization header, before the server invites a body with
  /// "100 Continue": a response returned here is sent instead (the body is never read and the
  /// connection closes), so an unauthenticated client is refused before it uploads anything.
  std::function<std::optional<http_response>(std::string_view authorization)> before_body;
};

/// Counters the server keeps (read by /metrics).
struct http_server_stats {
  std::size_t open_connections = 0;
  std::uint64_t accepted = 0;
  std::uint64_t refused_connections = 0;  // over max_connections
  std::uint64_t timed_out = 0;            // cut off by read_timeout
  std::size_t stream_bytes_waiting = 0;   // queued in every stream, not yet written
  std::uint64_t streams_cut = 0;          // closed for reading too slowly (either bound)
};

/// Listens and serves until stop(). Requests on one connection are handled one at a time.
class http_server {
 public:
  /// Binds and listens at once (throws std::runtime_error saying why it cannot), then serves
  /// on its own threads.
  http_server(http_server_config config, http_handler handler);
  ~http_server();  // stop()
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// The port it listens on (the one chosen when config.port was 0).
  std::uint16_t port() const;
  /// Stops accepting new connections; open ones go on.
  void stop_accepting();
  /// Closes every connection (open streams end: their on_close runs) and joins the threads.
  void stop();
  http_server_stats stats() const;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

/// "text" as a JSON string body of an error: {"error": {"code", "message", "pointer"?}}.
std::string error_body(std::string_view code, std::string_view message,
                       std::string_view pointer = {});

}  // namespace troupe::cli
