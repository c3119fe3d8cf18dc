// The in-memory store: ordered maps behind one mutex, so tests may read while a writer writes.
// It applies the same row checks as the SQL backends' constraints, so a batch that one backend
// refuses is refused by all.

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "persistence/detail/common.hpp"

namespace troupe::detail {

namespace {

class memory_store final : public store {
 public:
  std::string describe() const override { return "memory://"; }

  expected<write_outcome, store_error> write(const write_batch& batch) override {
    auto r = write_unfenced(batch);
    if (!r) {
      return make_unexpected(std::move(r.error()));
    }
    return write_outcome{};
  }

  expected<bool, store_error> write_unfenced(const write_batch& batch) {
    return guarded("memory store write", [&]() -> expected<bool, store_error> {
      // Check everything before changing anything: the batch is all or nothing.
      for (const auto& r : batch.runs) {
        if (auto s = status_name(r.status); !s) {
          return make_unexpected(s.error());
        }
      }
      for (const auto& n : batch.nodes) {
        if (!valid_node_key(n)) {
          return make_unexpected(
              store_error{"node row " + n.run_id + "/" + n.node_id +
                              ": item must be >= -1 and attempt >= 0 (constraint violated)",
                          false});
        }
        if (auto s = status_name(n.status); !s) {
          return make_unexpected(s.error());
        }
        if (auto s = status_name(n.cache); !s) {
          return make_unexpected(s.error());
        }
        if (auto s = status_name(n.spec_cache); !s) {
          return make_unexpected(s.error());
        }
      }
      std::lock_guard lock(mu_);
      // Readers wait for the whole batch anyway (all or nothing), so the yield may hold mu_.
      slice_pacer pacer(write_yield());
      for (const auto& r : batch.runs) {
        pacer.next_row();
        runs_.insert_or_assign(r.run_id, r);
      }
      for (const auto& n : batch.nodes) {
        pacer.next_row();
        nodes_[n.run_id].insert_or_assign(std::make_tuple(n.node_id, n.item, n.attempt), n);
      }
      for (const auto& w : batch.workflows) {
        pacer.next_row();
        workflows_.insert_or_assign(std::make_pair(w.name, w.version), w);
      }
      for (const auto& c : batch.cache) {
        pacer.next_row();
        cache_.insert_or_assign(c.key, c);
      }
      return true;
    });
  }

  expected<std::vector<run_row>, store_error> list_runs(const run_query& q) override {
    return guarded("memory store list_runs", [&]() -> expected<std::vector<run_row>, store_error> {
      std::vector<run_row> out;
      {
        std::lock_guard lock(mu_);
        for (const auto& [id, r] : runs_) {
          if ((!q.status || r.status == *q.status) &&
              (q.workflow.empty() || r.workflow == q.workflow) &&
              (q.parent_run_id.empty() || r.parent_run_id == q.parent_run_id)) {
            out.push_back(r);
          }
        }
      }
      std::sort(out.begin(), out.end(), [](const run_row& a, const run_row& b) {
        return std::tie(b.started_at, b.run_id) < std::tie(a.started_at, a.run_id);
      });
      if (q.limit != 0 && out.size() > q.limit) {
        out.resize(q.limit);
      }
      return out;
    });
  }

  expected<std::optional<run_row>, store_error> get_run(std::string_view run_id) override {
    return guarded("memory store get_run", [&]() -> expected<std::optional<run_row>, store_error> {
      std::lock_guard lock(mu_);
      auto it = runs_.find(run_id);
      if (it == runs_.end()) {
        return std::optional<run_row>();
      }
      return std::optional<run_row>(it->second);
    });
  }

  expected<std::vector<node_row>, store_error> node_rows(std::string_view run_id) override {
    return guarded("memory store node_rows", [&]() -> expected<std::vector<node_row>, store_error> {
      std::vector<node_row> out;
      {
        std::lock_guard lock(mu_);
        auto it = nodes_.find(run_id);
        if (it != nodes_.end()) {
          for (const auto& [k, n] : it->second) {
            out.push_back(n);
          }
        }
      }
      std::stable_sort(out.begin(), out.end(), [](const node_row& a, const node_row& b) {
        return std::tie(a.started_at, a.node_id, a.item, a.attempt) <
               std::tie(b.started_at, b.node_id, b.item, b.attempt);
      });
      return out;
    });
  }

  expected<std::vector<run_row>, store_error> unfinished_runs() override {
    return guarded("memory store unfinished_runs",
                   [&]() -> expected<std::vector<run_row>, store_error> {
                     std::vector<run_row> out;
                     {
                       std::lock_guard lock(mu_);
                       for (const auto& [id, r] : runs_) {
                         if (r.status == run_status::pending || r.status == run_status::running) {
                           out.push_back(r);
                         }
                       }
                     }
                     std::sort(out.begin(), out.end(), [](const run_row& a, const run_row& b) {
                       return std::tie(a.started_at, a.run_id) < std::tie(b.started_at, b.run_id);
                     });
                     return out;
                   });
  }

  expected<std::optional<workflow_row>, store_error> get_workflow(
      std::string_view name, std::string_view version) override {
    return guarded(
        "memory store get_workflow", [&]() -> expected<std::optional<workflow_row>, store_error> {
          std::lock_guard lock(mu_);
          auto it = workflows_.find(std::make_pair(std::string(name), std::string(version)));
          if (it == workflows_.end()) {
            return std::optional<workflow_row>();
          }
          return std::optional<workflow_row>(it->second);
        });
  }

  expected<std::optional<cache_row>, store_error> get_cache(std::string_view key) override {
    return guarded("memory store get_cache",
                   [&]() -> expected<std::optional<cache_row>, store_error> {
                     std::lock_guard lock(mu_);
                     auto it = cache_.find(key);
                     if (it == cache_.end()) {
                       return std::optional<cache_row>();
                     }
                     return std::optional<cache_row>(it->second);
                   });
  }

  expected<std::vector<cache_row>, store_error> list_cache(std::string_view workflow) override {
    return guarded(
        "memory store list_cache", [&]() -> expected<std::vector<cache_row>, store_error> {
          std::vector<cache_row> out;
          {
            std::lock_guard lock(mu_);
            for (const auto& [k, c] : cache_) {
              if (workflow.empty() || c.workflow == workflow) {
                out.push_back(c);
              }
            }
          }
          std::stable_sort(out.begin(), out.end(), [](const cache_row& a, const cache_row& b) {
            return std::tie(a.created_at, a.key) < std::tie(b.created_at, b.key);
          });
          return out;
        });
  }

  expected<std::size_t, store_error> clear_cache(std::string_view workflow) override {
    return guarded("memory store clear_cache", [&]() -> expected<std::size_t, store_error> {
      std::lock_guard lock(mu_);
      if (workflow.empty()) {
        const std::size_t n = cache_.size();
        cache_.clear();
        return n;
      }
      return static_cast<std::size_t>(
          std::erase_if(cache_, [&](const auto& kv) { return kv.second.workflow == workflow; }));
    });
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, run_row, std::less<>> runs_;
  std::map<std::string, std::map<std::tuple<std::string, std::int64_t, int>, node_row>, std::less<>>
      nodes_;
  std::map<std::pair<std::string, std::string>, workflow_row> workflows_;
  std::map<std::string, cache_row, std::less<>> cache_;
};

}  // namespace

std::unique_ptr<store> make_memory_store() {
  return std::make_unique<memory_store>();
}

}  // namespace troupe::detail
