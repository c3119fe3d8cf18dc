#pragma once

// Rows for the writer's tests: `count` node rows n0, n1, ... of one run, sent at `sent_us`.

#include <string>

#include "messages/messages.hpp"

namespace troupe::test {

inline persist node_rows_of(const std::string& run, int count, std::int64_t sent_us,
                            node_status status = node_status::succeeded) {
  persist m;
  m.sent_us = sent_us;
  for (int i = 0; i < count; ++i) {
    node_row r;
    r.run_id = run;
    r.node_id = "n" + std::to_string(i);
    r.attempt = 1;
    r.status = status;
    m.nodes.push_back(std::move(r));
  }
  return m;
}

}  // namespace troupe::test
