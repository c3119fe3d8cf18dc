#pragma once

// `troupe load --target http://HOST:PORT`: the load driver's target as a client of `troupe
// serve`. Each run is one `POST /v1/runs` with `"response": "wait"` on a kept-alive connection;
// the run ends for the driver when its answer arrives. No Beast in this header.

#include <memory>
#include <string>
#include <string_view>

#include "apps/load_driver.hpp"

namespace troupe::cli {

class http_target final : public load_target {
 public:
  /// `url`: http://HOST:PORT (no path). `api_key`: sent as a Bearer token when not empty.
  /// `connections`: the most connections opened (runs beyond wait for one). Throws
  /// std::runtime_error for a URL it cannot use.
  http_target(const std::string& url, std::string api_key, std::size_t connections);
  ~http_target() override;

  /// The service's persistence mode (GET /healthz), or why it cannot be reached.
  expected<persistence_mode, std::string> service_mode();
  /// Registers the workflow (`POST /v1/workflows`; an equal document registered before is
  /// fine) and remembers what each run posts. Errors: the server's, with their pointers.
  expected<std::string, validation_errors> use_workflow(std::string_view json_text,
                                                        json::object inputs);
  /// One run, waited for: the inputs' errors (400) with their pointers, or how it ended.
  expected<run_outcome, validation_errors> check();

  bool start_run(completion_callback done, std::string& error) override;
  bool drain(std::chrono::milliseconds) override { return true; }  // the server's writer
  target_counters counters() const override { return {}; }
  void stop() override;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace troupe::cli
