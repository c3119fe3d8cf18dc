// `troupe serve` as a user meets it: the real binary on loopback, driven by curl and by raw
// sockets (for what curl will not do: stall mid-request, hang up mid-stream, open a thousand
// connections). Every wait is on an event: a line on the server's stdout, a socket's end of
// file, a stream's run_finished, a process's exit. Nothing here depends on timing.
#define BOOST_TEST_MODULE service
#include <boost/test/unit_test.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <map>
#include <memory>
#include <regex>
#include <set>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include "test/apps/process.hpp"

using namespace troupe::test;
namespace json = boost::json;
namespace utf = boost::unit_test;

namespace {

const std::string doubler = R"({"name":"svc","inputs":{"n":{"type":"integer"}},
  "nodes":[{"id":"a","task":"echo","with":"{{ inputs.n * 2 }}"}],
  "outputs":{"x":"{{ nodes.a.output }}"}})";

// a, then b sleeps `ms` (an input), then c.
const std::string slow = R"({"name":"slow","inputs":{"ms":{"type":"integer"}},
  "nodes":[{"id":"a","task":"echo","with":1},
           {"id":"b","task":"sleep","needs":["a"],"with":{"ms":"{{ inputs.ms }}"}},
           {"id":"c","task":"echo","needs":["b"],"with":3}],
  "outputs":{"c":"{{ nodes.c.output }}"}})";

struct reply {
  int status = 0;
  std::string body;
  std::string headers;
  json::value doc() const { return json::parse(body); }
};

class server {
 public:
  explicit server(std::vector<std::string> extra = {}, std::string db = {},
                  temp_dir* shared_dir = nullptr)
      : dir_(shared_dir ? shared_dir : &own_dir_) {
    key_ = "k-test-secret-1";
    dir_->write_file("keys", "# operators' keys\n" + key_ + "\nk-other-2\n");
    if (db.empty()) {
      db = "sqlite://" + (dir_->path() / "s.db").string();
    }
    std::vector<std::string> args = {"serve",  "--listen",   "127.0.0.1:0", "--db",
                                      db,       "--mode",     "durable",     "--api-keys",
                                      (dir_->path() / "keys").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    proc_ = std::make_unique<child>(args, dir_->path());
    BOOST_REQUIRE_MESSAGE(proc_->wait_for_stdout("listening on http://"),
                          "troupe serve did not start: " << proc_->err_so_far());
    std::smatch m;
    const std::string& out = proc_->out_so_far();
    BOOST_REQUIRE(std::regex_search(out, m, std::regex("http://127\\.0\\.0\\.1:([0-9]+)")));
    port_ = std::stoi(m[1].str());
    url_ = "http://127.0.0.1:" + m[1].str();
  }

  const std::string& url() const { return url_; }
  int port() const { return port_; }
  const std::string& key() const { return key_; }
  const temp_dir& dir() const { return *dir_; }

  // curl ARGS... with the key, the status and headers captured.
  reply curl(std::vector<std::string> args, bool with_key = true) {
    const std::string headers = (dir_->path() / ("h" + std::to_string(++calls_))).string();
    std::vector<std::string> all = {"-s", "-S", "-D", headers, "-w", "\n%{http_code}"};
    if (with_key) {
      all.insert(all.end(), {"-H", "Authorization: Bearer " + key_});
    }
    all.insert(all.end(), args.begin(), args.end());
    child c("curl", all, dir_->path());
    auto r = c.finish();
    BOOST_REQUIRE_MESSAGE(r.exit_code == 0, "curl failed: " << r.err);
    reply out;
    auto nl = r.out.rfind('\n');
    out.status = std::stoi(r.out.substr(nl + 1));
    out.body = r.out.substr(0, nl);
    std::ifstream in(headers);
    out.headers.assign(std::istreambuf_iterator<char>(in), {});
    return out;
  }
  reply get(const std::string& path) { return curl({url_ + path}); }
  reply post(const std::string& path, const std::string& body,
             std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"-H", "Content-Type: application/json", "--data-binary",
                                     body};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(url_ + path);
    return curl(args);
  }

  // Every event of a run as the stream gives them, to its end (run_finished).
  std::vector<std::pair<std::int64_t, json::value>> events(const std::string& run_id,
                                                           std::int64_t after = -1) {
    std::vector<std::string> args = {"-N", url_ + "/v1/runs/" + run_id + "/events"};
    if (after >= 0) {
      args.insert(args.begin(), {"-H", "Last-Event-ID: " + std::to_string(after)});
    }
    return parse_sse(curl(args).body);
  }

  // Follows a run's events to run_finished as an EventSource client would: a stream the server
  // cuts (a burst it could not write fast enough) is reconnected with Last-Event-ID.
  std::vector<std::pair<std::int64_t, json::value>> events_to_end(const std::string& run_id,
                                                                  std::int64_t after = 0) {
    std::vector<std::pair<std::int64_t, json::value>> out;
    while (out.empty() || out.back().second.at("type") != "run_finished") {
      auto more = events(run_id, out.empty() ? after : out.back().first);
      BOOST_REQUIRE_MESSAGE(!more.empty(), "a reconnect made no progress");
      out.insert(out.end(), more.begin(), more.end());
    }
    return out;
  }

  // The whole frames of a stream's text (a cut may leave half a frame at its end).
  static std::vector<std::pair<std::int64_t, json::value>> parse_sse(std::string text) {
    const std::size_t whole = text.rfind("\n\n");
    text.resize(whole == std::string::npos ? 0 : whole + 2);
    std::vector<std::pair<std::int64_t, json::value>> out;
    std::istringstream in(text);
    std::string line;
    std::int64_t id = -1;
    while (std::getline(in, line)) {
      if (line.rfind("id: ", 0) == 0) {
        id = std::stoll(line.substr(4));
      } else if (line.rfind("data: ", 0) == 0) {
        out.emplace_back(id, json::parse(line.substr(6)));
      }
    }
    return out;
  }

  process_result stop(int signal = SIGTERM) {
    proc_->send(signal);
    return proc_->finish();
  }

  child& process() { return *proc_; }

 private:
  temp_dir own_dir_;
  temp_dir* dir_;
  std::unique_ptr<child> proc_;
  std::string url_;
  std::string key_;
  int port_ = 0;
  int calls_ = 0;
};

std::string str(const json::value& v, const char* key) {
  const auto* p = v.as_object().if_contains(key);
  return p && p->is_string() ? std::string(p->as_string()) : std::string();
}

// A raw connection to the server, for requests curl will not make.
class raw_socket {
 public:
  // receive_buffer > 0: the socket's receive buffer (set before connecting, so the window
  // stays that small).
  explicit raw_socket(int port, int receive_buffer = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    BOOST_REQUIRE(fd_ >= 0);
    if (receive_buffer > 0) {
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    BOOST_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~raw_socket() { close(); }
  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  int fd() const { return fd_; }
  void send_all(const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      BOOST_REQUIRE(n > 0);
      off += static_cast<std::size_t>(n);
    }
  }
  // Blocks until the server closes the connection; returns all it sent.
  std::string read_to_end() {
    std::string out;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        return out;
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
  }
  // Blocks until what was read holds `needle`.
  std::string read_until(const std::string& needle) {
    std::string out;
    char buf[4096];
    while (out.find(needle) == std::string::npos) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        break;
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
};

std::string post_request(const std::string& key, const std::string& path, const std::string& body,
                         bool keep_alive = false) {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         (keep_alive ? "" : "\r\nConnection: close") + "\r\n\r\n" + body;
}

// A request for a run's event stream; `extra`: more header lines, each ending in \r\n.
std::string events_request(const std::string& key, const std::string& target,
                           const std::string& extra = {}) {
  return "GET " + target + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + "\r\n" +
         extra + "\r\n";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(service, *utf::timeout(240))

BOOST_AUTO_TEST_CASE(register_run_wait_retry_and_read_the_run_back) {
  server s;
  auto reg = s.post("/v1/workflows", doubler);
  BOOST_TEST(reg.status == 201);
  BOOST_TEST(str(reg.doc(), "name") == "svc");
  auto list = s.get("/v1/workflows");
  BOOST_TEST(list.status == 200);
  BOOST_TEST(list.body.find("\"svc\"") != std::string::npos);
  BOOST_TEST(s.get("/v1/workflows/svc").status == 200);
  BOOST_TEST(s.get("/v1/workflows/nope").status == 404);
  BOOST_TEST(s.post("/v1/workflows", doubler).status == 201);  // the same document again: fine
  // Another document under the same name and version would change what runs for everyone.
  std::string tripler = doubler;
  tripler.replace(tripler.find("* 2"), 3, "* 3");
  auto clash = s.post("/v1/workflows", tripler);
  BOOST_TEST(clash.status == 409);
  BOOST_TEST(str(clash.doc().at("error"), "code") == "version_exists");

  const std::string body = R"({"workflow":"svc","inputs":{"n":21},"response":"wait"})";
  auto first = s.post("/v1/runs", body, {"-H", "Idempotency-Key: order-17"});
  BOOST_TEST(first.status == 200);
  auto doc = first.doc();
  BOOST_TEST(doc.at("outputs").at("x").as_int64() == 42);
  const std::string id = str(doc, "run_id");
  BOOST_TEST(id.size() == 26u);

  // The retry gets the same run; nothing runs twice.
  auto retry = s.post("/v1/runs", body, {"-H", "Idempotency-Key: order-17"});
  BOOST_TEST(retry.status == 200);
  BOOST_TEST(str(retry.doc(), "run_id") == id);
  // The same key for another request is refused.
  auto other = s.post("/v1/runs", R"({"workflow":"svc","inputs":{"n":22},"response":"wait"})",
                      {"-H", "Idempotency-Key: order-17"});
  BOOST_TEST(other.status == 422);
  BOOST_TEST(str(other.doc().at("error"), "code") == "idempotency_key_reused");

  auto run = s.get("/v1/runs/" + id);
  BOOST_TEST(run.status == 200);
  BOOST_TEST(run.body.find("\"succeeded\"") != std::string::npos);
  auto nodes = s.get("/v1/runs/" + id + "/nodes");
  BOOST_TEST(nodes.status == 200);
  BOOST_TEST(nodes.doc().at("nodes").as_array().size() == 1u);
  auto runs = s.get("/v1/runs?workflow=svc&limit=10");
  BOOST_TEST(runs.status == 200);
  BOOST_TEST(runs.doc().at("runs").as_array().size() == 1u);  // one run, not two

  // async: 202 with a Location.
  auto later = s.post("/v1/runs", R"({"workflow":"svc","inputs":{"n":1}})");
  BOOST_TEST(later.status == 202);
  BOOST_TEST(later.headers.find("Location: /v1/runs/") != std::string::npos);

  // Bad requests, each with its code and pointer.
  auto bad = s.post("/v1/runs", R"({"workflow":"svc","inputs":{"n":"x"}})");
  BOOST_TEST(bad.status == 400);
  BOOST_TEST(str(bad.doc().at("error"), "pointer") == "/inputs/n");
  BOOST_TEST(s.post("/v1/runs", R"({"workflow":"none"})").status == 404);
  BOOST_TEST(s.post("/v1/runs", R"({"workflow":"svc","response":"later"})").status == 400);
  BOOST_TEST(s.post("/v1/runs", "{not json").status == 400);
  BOOST_TEST(s.get("/v1/runs/01jnonexistent0000000000000").status == 404);
  BOOST_TEST(s.get("/v1/nothing").status == 404);
  BOOST_TEST(s.curl({"-X", "DELETE", s.url() + "/v1/runs"}).status == 405);

  auto end = s.stop();
  BOOST_TEST(end.exit_code == 0, end.err);
}

BOOST_AUTO_TEST_CASE(events_replay_in_order_from_any_point) {
  server s;
  BOOST_REQUIRE(s.post("/v1/workflows", slow).status == 201);
  auto r = s.post("/v1/runs", R"({"workflow":"slow","inputs":{"ms":1},"response":"wait"})");
  BOOST_REQUIRE(r.status == 200);
  const std::string id = str(r.doc(), "run_id");
  auto all = s.events(id, 0);
  std::vector<std::string> types;
  for (std::size_t i = 0; i < all.size(); ++i) {
    BOOST_TEST(all[i].first == static_cast<std::int64_t>(i + 1));  // ids 1, 2, 3, ...
    types.push_back(str(all[i].second, "type"));
  }
  BOOST_TEST((types == std::vector<std::string>{"run_started", "node_started", "node_finished",
                                                "node_started", "node_finished", "node_started",
                                                "node_finished", "run_finished"}));
  // Resuming after event 3: exactly what came after it.
  auto rest = s.events(id, 3);
  BOOST_REQUIRE(rest.size() == all.size() - 3);
  BOOST_TEST(rest.front().first == 4);
  BOOST_TEST(str(rest.back().second, "type") == "run_finished");
  // ?after=N says the same.
  auto q = s.parse_sse(s.curl({"-N", s.url() + "/v1/runs/" + id + "/events?after=6"}).body);
  BOOST_TEST(q.size() == 2u);

  // After a restart, the same numbers come from the log.
  s.stop();
  server again({}, "sqlite://" + (s.dir().path() / "s.db").string());
  auto from_log = again.events(id, 0);
  BOOST_REQUIRE(from_log.size() == all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    BOOST_TEST(from_log[i].first == all[i].first);
    BOOST_TEST(str(from_log[i].second, "type") == str(all[i].second, "type"));
  }
  BOOST_TEST(again.events(id, 5).size() == 3u);
}

BOOST_AUTO_TEST_CASE(a_stream_shows_the_run_live_and_a_client_that_leaves_leaves_it_running) {
  server s;
  BOOST_REQUIRE(s.post("/v1/workflows", slow).status == 201);
  std::string id;
  {
    raw_socket c(s.port());
    c.send_all(post_request(s.key(), "/v1/runs",
                            R"({"workflow":"slow","inputs":{"ms":300},"response":"stream"})"));
    std::string seen = c.read_until("\"node_id\":\"b\"");  // b started: mid-run
    BOOST_TEST(seen.find("Content-Type: text/event-stream") != std::string::npos);
    std::smatch m;
    BOOST_REQUIRE(std::regex_search(seen, m, std::regex("\"run_id\":\"([0-9a-z]{26})\"")));
    id = m[1].str();
  }  // hangs up
  // The run goes on: its stream (from the log and live) reaches run_finished.
  auto events = s.events(id);
  BOOST_REQUIRE(!events.empty());
  BOOST_TEST(str(events.back().second, "type") == "run_finished");
  BOOST_TEST(str(events.back().second, "status") == "succeeded");
  auto run = s.get("/v1/runs/" + id);
  BOOST_TEST(run.body.find("\"succeeded\"") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(keys_are_required_and_checked) {
  server s;
  BOOST_TEST(s.curl({s.url() + "/v1/runs"}, false).status == 401);
  BOOST_TEST(s.curl({"-H", "Authorization: Bearer wrong", s.url() + "/v1/runs"}, false).status ==
             401);
  BOOST_TEST(s.curl({"-H", "Authorization: Bearer k-other-2", s.url() + "/v1/runs"}, false)
                 .status == 200);
  BOOST_TEST(s.curl({s.url() + "/metrics"}, false).status == 401);
  // Probes need no key.
  BOOST_TEST(s.curl({s.url() + "/healthz"}, false).status == 200);
  BOOST_TEST(s.curl({s.url() + "/readyz"}, false).status == 200);
}

BOOST_AUTO_TEST_CASE(every_limit_answers_with_its_status) {
  server s({"--max-body", "65536", "--rate-limit", "0.001", "--read-timeout-ms", "300"});
  // Body too large: 413, before the body is read.
  std::string big(200000, 'x');
  s.dir().write_file("big", big);
  auto r = s.curl({"-H", "Content-Type: application/json", "--data-binary", "@big",
                   s.url() + "/v1/runs"});
  BOOST_TEST(r.status == 413);
  // Headers too large: 431.
  auto h = s.curl({"-H", "X-Big: " + std::string(20000, 'h'), s.url() + "/v1/runs"});
  BOOST_TEST(h.status == 431);
  // JSON nested too deep: 400.
  std::string deep = R"({"workflow":"svc","inputs":{"n":)" + std::string(200, '[') +
                     std::string(200, ']') + "}}";
  auto d = s.post("/v1/runs", deep);
  BOOST_TEST(d.status == 400);
  // A workflow from the network may not use shell: 403, with the pointer.
  auto sh = s.post("/v1/workflows",
                   R"({"name":"sh","nodes":[{"id":"x","task":"shell","with":{"cmd":"id"}}]})");
  BOOST_TEST(sh.status == 403);
  BOOST_TEST(str(sh.doc().at("error"), "pointer") == "/nodes/0/task");
  // A slow client (a request that never completes) is cut off: the server closes.
  {
    raw_socket c(s.port());
    c.send_all("GET /heal");
    BOOST_TEST(c.read_to_end().empty());
  }
  // Requests past the key's rate: 429 with Retry-After (the bucket holds 50, refilled at
  // 0.001/s: the requests above used some; 60 more cannot all pass).
  std::vector<std::string> args;
  for (int i = 0; i < 60; ++i) {
    args.push_back(s.url() + "/healthz-not");
  }
  // One curl, 60 transfers: the last status is what -w prints last.
  auto burst = s.curl(args);
  BOOST_TEST(burst.status == 429);
  BOOST_TEST(burst.headers.find("Retry-After:") != std::string::npos);
}

// "Expect: 100-continue" invites the body only from a client with a valid key, and only over
// HTTP/1.1; a client without a key is refused before it uploads anything.
BOOST_AUTO_TEST_CASE(a_body_is_invited_only_from_an_authenticated_client) {
  server s;
  const std::string body = R"({"workflow":"nope","inputs":{}})";
  auto head = [&](const std::string& version, const std::string& auth) {
    return "POST /v1/runs " + version + "\r\nHost: x\r\n" + auth +
           "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n";
  };
  {
    raw_socket c(s.port());
    c.send_all(head("HTTP/1.1", "Authorization: Bearer wrong\r\n"));
    std::string answer = c.read_to_end();  // answered and closed without the body
    BOOST_TEST(answer.rfind("HTTP/1.1 401", 0) == 0, answer);
    BOOST_TEST(answer.find("100 Continue") == std::string::npos);
    BOOST_TEST(answer.find("WWW-Authenticate: Bearer") != std::string::npos);
  }
  {
    raw_socket c(s.port());
    c.send_all(head("HTTP/1.1", "Authorization: Bearer " + s.key() + "\r\n"));
    BOOST_TEST(c.read_until("\r\n\r\n") == "HTTP/1.1 100 Continue\r\n\r\n");
    c.send_all(body);
    std::string answer = c.read_until("}}");
    BOOST_TEST(answer.rfind("HTTP/1.1 404", 0) == 0, answer);  // no such workflow: it was read
  }
  {
    raw_socket c(s.port());
    c.send_all(head("HTTP/1.0", "Authorization: Bearer " + s.key() + "\r\n") + body);
    std::string answer = c.read_to_end();
    BOOST_TEST(answer.find("100 Continue") == std::string::npos, answer);
    BOOST_TEST(answer.find(" 404 ") != std::string::npos, answer);
  }
}

// A stream whose client stops reading is closed: by the stream's bound (--max-stream-buffer)
// when live frames pile up, or by the write timeout when its first backlog (a replay, which the
// bound exempts) does not drain. The client reconnects with Last-Event-ID and gets the rest;
// frames larger than the bound (150 KB outputs, a 6 MB array) get through.
BOOST_AUTO_TEST_CASE(a_stream_reader_that_falls_behind_is_cut_off_and_resumes) {
  server s({"--max-stream-buffer", "1048576", "--read-timeout-ms", "300"});
  BOOST_REQUIRE(s.post("/v1/workflows", R"({"name":"big","inputs":{"s":{"type":"string"}},
      "nodes":[{"id":"a","task":"sleep","with":{"ms":200}},
               {"id":"e","task":"echo","needs":["a"],"for_each":"{{ range(40) }}",
                "with":"{{ inputs.s }}"}],
      "outputs":{"n":"{{ len(nodes.e.output) }}"}})").status == 201);
  s.dir().write_file("big-run.json", R"({"workflow":"big","inputs":{"s":")" +
                                          std::string(150000, 'p') + R"("}})");
  auto run = s.curl({"-H", "Content-Type: application/json", "--data-binary", "@big-run.json",
                     s.url() + "/v1/runs"});
  BOOST_REQUIRE_MESSAGE(run.status == 202, run.body.substr(0, 300));
  const std::string id = str(run.doc(), "run_id");
  // A client with a tiny receive window that reads nothing until the server gives up on it.
  raw_socket slow(s.port(), 4096);
  slow.send_all(events_request(s.key(), "/v1/runs/" + id + "/events"));
  // A client that reads: it sees the whole run (about 12 MB of events).
  auto all = s.events_to_end(id);
  BOOST_REQUIRE(!all.empty());
  BOOST_TEST(str(all.back().second, "type") == "run_finished");
  const std::string first = slow.read_to_end();
  BOOST_TEST(first.rfind("HTTP/1.1 200", 0) == 0);
  BOOST_TEST(first.find("event: run_finished") == std::string::npos);  // cut before the end
  auto frames = server::parse_sse(first.substr(first.find("\r\n\r\n") + 4));
  const std::int64_t last = frames.empty() ? 0 : frames.back().first;
  auto metrics = s.get("/metrics");
  std::smatch cut;
  BOOST_REQUIRE(std::regex_search(metrics.body, cut,
                                  std::regex(R"(troupe_http_streams_cut_total ([0-9]+))")));
  BOOST_TEST(std::stoi(cut[1].str()) >= 1);
  // Reconnecting after the last whole frame gives the rest, through run_finished.
  auto rest = s.events_to_end(id, last);
  BOOST_REQUIRE(!rest.empty());
  BOOST_TEST(rest.front().first == last + 1);
  BOOST_TEST(str(rest.back().second, "type") == "run_finished");
  BOOST_TEST(rest.back().first == all.back().first);
  std::int64_t expected = last + 1;
  for (const auto& [seq, event] : rest) {
    BOOST_TEST(seq == expected++);
  }
}

// A running run keeps only its latest 10,000 events in memory: a stream from the start replays
// the older ones from the log, then the newer ones from memory, then goes live.
BOOST_AUTO_TEST_CASE(a_stream_from_before_the_memory_replays_the_log_then_goes_live) {
  server s;
  BOOST_REQUIRE(s.post("/v1/workflows", R"({"name":"long",
      "nodes":[{"id":"e","task":"echo","for_each":"{{ range(6000) }}","with":"{{ item }}"},
               {"id":"b","task":"sleep","needs":["e"],"with":{"ms":600000}}]})").status == 201);
  auto run = s.post("/v1/runs", R"({"workflow":"long","inputs":{}})");
  BOOST_REQUIRE(run.status == 202);
  const std::string id = str(run.doc(), "run_id");
  {
    // Wait (on the event stream itself) until b sleeps: 12,000 events have happened by then.
    raw_socket watch(s.port());
    watch.send_all(events_request(s.key(), "/v1/runs/" + id + "/events?after=11000"));
    watch.read_until("\"node_id\":\"b\"");
  }
  raw_socket c(s.port());
  c.send_all(events_request(s.key(), "/v1/runs/" + id + "/events", "Last-Event-ID: 0\r\n"));
  std::string text = c.read_until("\"node_id\":\"b\"");
  // The stream is live: cancelling the run ends it with run_finished.
  BOOST_REQUIRE(s.post("/v1/runs/" + id + "/cancel", "").status == 202);
  text += c.read_to_end();
  auto frames = server::parse_sse(text.substr(text.find("\r\n\r\n") + 4));
  BOOST_REQUIRE(frames.size() > 12000u);
  std::int64_t expected = 1;
  for (const auto& [seq, event] : frames) {
    BOOST_TEST_REQUIRE(seq == expected++);
  }
  BOOST_TEST(str(frames.back().second, "type") == "run_finished");
  BOOST_TEST(str(frames.back().second, "status") == "cancelled");
}

BOOST_AUTO_TEST_CASE(connections_past_the_limit_get_503) {
  server s({"--max-connections", "2"});
  raw_socket a(s.port());
  raw_socket b(s.port());
  // Both held open and idle; one more is refused at once.
  a.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  a.read_until("\r\n\r\n");
  b.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  b.read_until("\r\n\r\n");
  raw_socket c(s.port());
  std::string answer = c.read_to_end();
  BOOST_TEST(answer.find("503") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_thousand_concurrent_clients_each_get_their_run) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, 8192);
  ::setrlimit(RLIMIT_NOFILE, &rl);  // the server inherits it
  BOOST_REQUIRE(rl.rlim_cur >= 2200);
  server s({"--http-threads", "2"}, "memory://");
  BOOST_REQUIRE(s.post("/v1/workflows", doubler).status == 201);
  constexpr int clients = 1000;
  std::vector<std::unique_ptr<raw_socket>> socks;
  for (int i = 0; i < clients; ++i) {
    socks.push_back(std::make_unique<raw_socket>(s.port()));
  }
  for (int i = 0; i < clients; ++i) {
    socks[i]->send_all(post_request(
        s.key(), "/v1/runs",
        R"({"workflow":"svc","response":"wait","inputs":{"n":)" + std::to_string(i) + "}}"));
  }
  std::set<std::string> ids;
  for (int i = 0; i < clients; ++i) {
    std::string answer = socks[i]->read_to_end();
    BOOST_REQUIRE_MESSAGE(answer.rfind("HTTP/1.1 200", 0) == 0, answer.substr(0, 200));
    auto doc = json::parse(answer.substr(answer.find("\r\n\r\n") + 4));
    BOOST_TEST(doc.at("outputs").at("x").as_int64() == 2 * i);
    ids.insert(str(doc, "run_id"));
  }
  BOOST_TEST(ids.size() == static_cast<std::size_t>(clients));
  // /metrics agrees with what was run.
  auto m = s.get("/metrics");
  BOOST_TEST(m.status == 200);
  std::smatch f;
  BOOST_REQUIRE(std::regex_search(
      m.body, f,
      std::regex(R"(troupe_runs_finished_total\{workflow="svc",status="succeeded"\} ([0-9]+))")));
  BOOST_TEST(std::stoi(f[1].str()) == clients);
  BOOST_REQUIRE(std::regex_search(
      m.body, f, std::regex(R"(troupe_http_requests_total\{route="/v1/runs",status="200"\} ([0-9]+))")));
  BOOST_TEST(std::stoi(f[1].str()) == clients);
  BOOST_REQUIRE(std::regex_search(
      m.body, f, std::regex(R"(troupe_node_duration_seconds_count\{task="echo"\} ([0-9]+))")));
  BOOST_TEST(std::stoi(f[1].str()) == clients);
  // Histogram buckets are cumulative.
  std::regex bucket(R"(troupe_node_duration_seconds_bucket\{task="echo",le="[^"]+"\} ([0-9]+))");
  long previous = -1;
  for (auto it = std::sregex_iterator(m.body.begin(), m.body.end(), bucket);
       it != std::sregex_iterator(); ++it) {
    long v = std::stol((*it)[1].str());
    BOOST_TEST(v >= previous);
    previous = v;
  }
  BOOST_TEST(previous == clients);
}

BOOST_AUTO_TEST_CASE(sigterm_lets_running_runs_finish_then_exits_zero) {
  temp_dir dir;
  std::string id;
  {
    server s({}, {}, &dir);
    BOOST_REQUIRE(s.post("/v1/workflows", slow).status == 201);
    auto started = s.post("/v1/runs", R"({"workflow":"slow","inputs":{"ms":400}})");
    BOOST_REQUIRE(started.status == 202);
    id = str(started.doc(), "run_id");
    raw_socket ev(s.port());
    ev.send_all(events_request(s.key(), "/v1/runs/" + id + "/events"));
    ev.read_until("\"node_id\":\"b\"");  // b is sleeping: the run is in flight
    s.process().send(SIGTERM);
    std::string rest = ev.read_to_end();  // the stream still sees the run to its end
    BOOST_TEST(rest.find("run_finished") != std::string::npos, rest);
    BOOST_TEST(rest.find("\"status\":\"succeeded\"") != std::string::npos);
    auto end = s.process().finish();
    BOOST_TEST(end.exit_code == 0, end.err);
  }
  // The log holds it, finished.
  auto shown = run_troupe({"runs", "show", id, "--db", "sqlite://" + (dir.path() / "s.db").string(),
                           "--json"},
                          dir.path());
  BOOST_TEST(shown.exit_code == 0, shown.err);
  BOOST_TEST(shown.out.find("\"succeeded\"") != std::string::npos);
}

// A run in flight when its server is killed is adopted by the next server on the database, as
// one of its own: its events stream live (the old ones from the log) and it can be cancelled.
BOOST_AUTO_TEST_CASE(a_run_adopted_after_a_crash_streams_live_and_can_be_cancelled) {
  temp_dir dir;
  std::string id;
  {
    server s({}, {}, &dir);
    BOOST_REQUIRE(s.post("/v1/workflows", slow).status == 201);
    auto started = s.post("/v1/runs", R"({"workflow":"slow","inputs":{"ms":600000}})");
    BOOST_REQUIRE(started.status == 202);
    id = str(started.doc(), "run_id");
    raw_socket ev(s.port());
    ev.send_all(events_request(s.key(), "/v1/runs/" + id + "/events"));
    ev.read_until("\"node_id\":\"b\"");  // b sleeps
    // A run answered in wait mode was committed, and with it (the writer commits in order)
    // every row of the slow run handed to the writer before.
    BOOST_REQUIRE(s.post("/v1/workflows", doubler).status == 201);
    BOOST_REQUIRE(
        s.post("/v1/runs", R"({"workflow":"svc","inputs":{"n":1},"response":"wait"})").status ==
        200);
    s.stop(SIGKILL);
  }
  server s({}, {}, &dir);  // adopts the run before it listens: its first owner is gone
  BOOST_TEST(s.process().wait_for_stderr("resumed 1 runs"));
  raw_socket c(s.port());
  c.send_all(events_request(s.key(), "/v1/runs/" + id + "/events", "Last-Event-ID: 0\r\n"));
  // b's first attempt (from the log), then its second one here.
  std::string text = c.read_until("\"attempt\":2");
  auto cancelled = s.post("/v1/runs/" + id + "/cancel", "");
  BOOST_TEST(cancelled.status == 202, cancelled.body);
  text += c.read_to_end();
  BOOST_TEST(text.find("not running in this process") == std::string::npos);
  auto frames = server::parse_sse(text.substr(text.find("\r\n\r\n") + 4));
  BOOST_REQUIRE(!frames.empty());
  BOOST_TEST(str(frames.back().second, "type") == "run_finished");
  BOOST_TEST(str(frames.back().second, "status") == "cancelled");
  // a ran once, in the first server.
  int a_finished = 0;
  for (const auto& [seq, e] : frames) {
    a_finished += str(e, "type") == "node_finished" && str(e, "node_id") == "a";
  }
  BOOST_TEST(a_finished == 1);
}

BOOST_AUTO_TEST_CASE(an_idempotency_key_survives_a_restart_in_durable_mode) {
  temp_dir dir;
  const std::string body = R"({"workflow":"svc","inputs":{"n":5},"response":"wait"})";
  std::string id;
  {
    server s({}, {}, &dir);
    BOOST_REQUIRE(s.post("/v1/workflows", doubler).status == 201);
    auto r = s.post("/v1/runs", body, {"-H", "Idempotency-Key: pay-1"});
    BOOST_REQUIRE(r.status == 200);
    id = str(r.doc(), "run_id");
    BOOST_TEST(s.stop().exit_code == 0);
  }
  std::filesystem::create_directories(dir.path() / "wf");
  dir.write_file("wf/svc.json", doubler);
  server again({"--workflows", (dir.path() / "wf").string()}, {}, &dir);
  auto retry = again.post("/v1/runs", body, {"-H", "Idempotency-Key: pay-1"});
  BOOST_TEST(retry.status == 200);
  BOOST_TEST(str(retry.doc(), "run_id") == id);
  BOOST_TEST(retry.doc().at("outputs").at("x").as_int64() == 10);
  auto runs = again.get("/v1/runs?workflow=svc");
  BOOST_TEST(runs.doc().at("runs").as_array().size() == 1u);
}

BOOST_AUTO_TEST_CASE(cancel_and_resume_through_the_api) {
  server s;
  BOOST_REQUIRE(s.post("/v1/workflows", slow).status == 201);
  auto started = s.post("/v1/runs", R"({"workflow":"slow","inputs":{"ms":600000}})");
  BOOST_REQUIRE(started.status == 202);
  const std::string id = str(started.doc(), "run_id");
  auto c = s.post("/v1/runs/" + id + "/cancel", "");
  BOOST_TEST(c.status == 202);
  auto events = s.events(id);  // to its end
  BOOST_REQUIRE(!events.empty());
  BOOST_TEST(str(events.back().second, "status") == "cancelled");
  BOOST_TEST(s.post("/v1/runs/" + id + "/cancel", "").status == 409);
  // Resume re-runs what did not succeed (a's output is kept), here with the same long sleep:
  // it starts again, and is cancelled again.
  auto resumed = s.post("/v1/runs/" + id + "/resume", "");
  BOOST_TEST(resumed.status == 202, resumed.body);
  BOOST_TEST(s.post("/v1/runs/" + id + "/cancel", "").status == 202);
  BOOST_TEST(s.post("/v1/runs/01jnonexistent0000000000000/resume", "").status == 404);
}

// What a workflow from the network may do: its http tasks stay off loopback and private
// addresses (SSRF) unless the operator names the host, and what its dynamic nodes generate is
// held to the same allowed tasks; the operator's own workflows are trusted.
BOOST_AUTO_TEST_CASE(api_workflows_are_held_to_the_operators_limits) {
  temp_dir dir;
  std::filesystem::create_directories(dir.path() / "wf");
  // Calls a URL given as input: here the server's own /healthz, on loopback.
  auto caller = [](const std::string& name) {
    return R"({"name":")" + name + R"(","inputs":{"url":{"type":"string"}},
      "nodes":[{"id":"h","task":"http","with":{"url":"{{ inputs.url }}"}}],
      "outputs":{"status":"{{ nodes.h.output.status }}"}})";
  };
  dir.write_file("wf/trusted.json", caller("trusted"));  // the operator's
  const std::string generator = R"({"name":"gen","nodes":[{"id":"g","task":"echo",
      "with":{"name":"inner","nodes":[{"id":"x","task":"shell","with":{"command":"id"}}]},
      "dynamic":{}}]})";
  {
    server s({"--workflows", (dir.path() / "wf").string()}, {}, &dir);
    const std::string inputs = R"({"url":")" + s.url() + R"(/healthz"})";
    BOOST_REQUIRE(s.post("/v1/workflows", caller("ssrf")).status == 201);
    // The operator's workflow names are not the API's to take, not even as a new version.
    std::string hijack = caller("trusted");
    hijack.replace(hijack.find("\"name\":\"trusted\""), 16, "\"name\":\"trusted\",\"version\":\"9\"");
    auto taken = s.post("/v1/workflows", hijack);
    BOOST_TEST(taken.status == 403, taken.body);
    auto r = s.post("/v1/runs", R"({"workflow":"ssrf","response":"wait","inputs":)" + inputs + "}");
    BOOST_TEST(r.status == 200);
    BOOST_TEST(str(r.doc(), "status") == "failed");
    BOOST_TEST(r.body.find("refused to connect") != std::string::npos, r.body);
    auto t = s.post("/v1/runs", R"({"workflow":"trusted","response":"wait","inputs":)" + inputs + "}");
    BOOST_TEST(str(t.doc(), "status") == "succeeded", t.body);
    BOOST_REQUIRE(s.post("/v1/workflows", generator).status == 201);
    auto g = s.post("/v1/runs", R"({"workflow":"gen","response":"wait"})");
    BOOST_TEST(str(g.doc(), "status") == "failed");
    BOOST_TEST(g.body.find("uses task 'shell'") != std::string::npos, g.body);
  }
  server s({"--allow-http-hosts", "127.0.0.1"});
  BOOST_REQUIRE(s.post("/v1/workflows", caller("listed")).status == 201);
  auto ok = s.post("/v1/runs", R"({"workflow":"listed","response":"wait","inputs":{"url":")" +
                                   s.url() + R"(/healthz"}})");
  BOOST_TEST(str(ok.doc(), "status") == "succeeded", ok.body);
}

BOOST_AUTO_TEST_CASE(runs_are_listed_newest_first_page_by_page) {
  for (std::string db : {std::string(), std::string("memory://")}) {
    server s({}, db);
    BOOST_REQUIRE(s.post("/v1/workflows", doubler).status == 201);
    std::vector<std::string> started;
    for (int i = 0; i < 7; ++i) {
      auto r = s.post("/v1/runs", R"({"workflow":"svc","response":"wait","inputs":{"n":)" +
                                      std::to_string(i) + "}}");
      BOOST_REQUIRE(r.status == 200);
      started.push_back(str(r.doc(), "run_id"));
    }
    std::vector<std::string> listed;
    std::string cursor;
    int pages = 0;
    for (;;) {
      auto page = s.get("/v1/runs?workflow=svc&top_level=true&limit=3" +
                        (cursor.empty() ? std::string() : "&cursor=" + cursor));
      BOOST_REQUIRE(page.status == 200);
      ++pages;
      const json::value doc = page.doc();
      for (const auto& r : doc.at("runs").as_array()) {
        listed.push_back(str(r, "run_id"));
      }
      const auto& next = doc.at("next_cursor");
      if (next.is_null()) {
        break;
      }
      cursor = std::string(next.as_string());
      BOOST_REQUIRE(pages < 10);
    }
    BOOST_TEST(pages == 3);
    std::vector<std::string> newest_first(started.rbegin(), started.rend());
    BOOST_TEST(listed == newest_first, "db " << (db.empty() ? "sqlite" : db));
    BOOST_TEST(s.get("/v1/runs?cursor=nonsense").status == 400);
    BOOST_TEST(s.get("/v1/runs?limit=0").status == 400);
  }
}

BOOST_AUTO_TEST_CASE(troupe_load_drives_the_service) {
  server s;
  auto r = run_troupe({"load", "--target", s.url(), "--api-key", s.key(), "--scenario", "W3",
                       "--runs", "500", "--in-flight", "8", "--json"},
                      s.dir().path());
  BOOST_TEST(r.exit_code == 0, r.err);
  auto doc = json::parse(r.out);
  const auto& m = doc.at("results").as_array().at(0);
  BOOST_TEST(str(m, "mode") == "durable");  // the server's, as /healthz says
  BOOST_TEST(m.at("runs").to_number<int>() == 500);
  BOOST_TEST(m.at("errors").to_number<int>() == 0);
  // The runs are the server's: its log holds them (and the checking run).
  auto runs = s.get("/v1/runs?workflow=load-w3&limit=1000");
  BOOST_TEST(runs.doc().at("runs").as_array().size() == 501u);
  // Flags that belong to the server are refused.
  auto bad = run_troupe({"load", "--target", s.url(), "--scenario", "W3", "--mode", "memory"},
                        s.dir().path());
  BOOST_TEST(bad.exit_code == 2);
  // Every wait-mode request above asked to wait up to 10 minutes and was answered when its run
  // ended: none may leave its wait armed, or SIGTERM would wait for it (and this test time out).
  auto end = s.stop();
  BOOST_TEST(end.exit_code == 0, end.err);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(without_keys_it_refuses_to_listen_beyond_loopback) {
  temp_dir dir;
  auto r = run_troupe({"serve", "--listen", "0.0.0.0:0", "--db", "memory://"}, dir.path());
  BOOST_TEST(r.exit_code == 2);
  BOOST_TEST(r.err.find("without API keys") != std::string::npos);
}
