#pragma once

// What happens to a cluster worker's link to one coordinator (actors/node_agent.hpp), as the
// embedding API passes it on (engine::join_cluster). No CAF here: runtime/engine.hpp includes it.

#include <string>

namespace troupe {

struct cluster_link_event {
  enum class kind {
    joined,           // connected and welcomed; `text`: the coordinator's identity
    lost,             // a joined coordinator is gone; `text`: why
    unreachable,      // a connect or hello failed; it is tried again; `text`: why
    version_refused,  // the coordinator runs another troupe version or protocol
  };
  kind what = kind::joined;
  std::string endpoint;  // "host:port"
  std::string text;
};

}  // namespace troupe
