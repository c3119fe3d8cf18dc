// The in-memory store: ordered maps behind one mutex, so tests may read while a writer writes.
// It applies the same row checks as the SQL backends' constraints, so a batch that one backend
// refuses is refused by all. Every call holds mu_ for its whole work, so a write's fence (the
// epochs it reads) and a claim or renewal never interleave, as the SQL backends' row locks
// ensure there.

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
    return guarded("memory store write", [&]() -> expected<write_outcome, store_error> {
      // Check everything before changing anything: the batch is all or nothing.
      if (auto r = check_rows(batch); !r) {
        return make_unexpected(r.error());
      }
      fence_pairs fence;
      for (const auto& r : batch.runs) {
        fence.add(r.run_id, r.epoch);
      }
      for (const auto& n : batch.nodes) {
        fence.add(n.run_id, n.epoch);
      }
      write_outcome out;
      std::lock_guard lock(mu_);
      // Claims take mu_ too: the epochs read here hold until the batch is in.
      for (const auto& [run_id, epoch] : fence.pairs()) {
        auto it = runs_.find(run_id);
        if (it != runs_.end() && it->second.epoch != epoch) {
          out.fenced_runs.emplace_back(run_id);
        }
      }
      sort_ids(out.fenced_runs);
      const auto fenced = [&](const std::string& run_id) {
        return !out.fenced_runs.empty() &&
               std::binary_search(out.fenced_runs.begin(), out.fenced_runs.end(), run_id);
      };
      // Readers wait for the whole batch anyway (all or nothing), so the yield may hold mu_.
      slice_pacer pacer(write_yield());
      for (const auto& r : batch.runs) {
        pacer.next_row();
        if (!fenced(r.run_id)) {
          upsert_run(r);
        }
      }
      for (const auto& n : batch.nodes) {
        pacer.next_row();
        if (!fenced(n.run_id)) {
          node_row& stored = nodes_[n.run_id]
                                 .insert_or_assign(std::make_tuple(n.node_id, n.item, n.attempt), n)
                                 .first->second;
          stored.epoch = 0;  // not stored: reads return 0, as from the SQL stores
        }
      }
      for (const auto& w : batch.workflows) {
        pacer.next_row();
        workflows_.insert_or_assign(std::make_pair(w.name, w.version), w);
      }
      for (const auto& c : batch.cache) {
        pacer.next_row();
        cache_.insert_or_assign(c.key, c);
      }
      return out;
    });
  }

  expected<claim_result, store_error> claim_run(std::string_view run_id, std::string_view owner,
                                                std::int64_t now_us,
                                                std::int64_t lease_until_us) override {
    return guarded("memory store claim_run", [&]() -> expected<claim_result, store_error> {
      claim_result out;
      std::lock_guard lock(mu_);
      auto it = runs_.find(run_id);
      if (it == runs_.end()) {
        return out;
      }
      run_row& r = it->second;
      out.found = true;
      if (r.status != run_status::succeeded && r.lease_until <= now_us) {
        r.owner = owner;
        r.epoch += 1;
        r.lease_until = lease_until_us;
        out.claimed = true;
      }
      out.owner = r.owner;
      out.lease_until = r.lease_until;
      out.epoch = r.epoch;
      out.status = r.status;
      return out;
    });
  }

  expected<std::vector<std::string>, store_error> renew_leases(
      std::string_view owner, const std::vector<lease_ref>& runs,
      std::int64_t lease_until_us) override {
    return guarded("memory store renew_leases",
                   [&]() -> expected<std::vector<std::string>, store_error> {
                     std::vector<std::string> lost;
                     std::lock_guard lock(mu_);
                     for (const lease_ref& ref : runs) {
                       auto it = runs_.find(ref.run_id);
                       if (it == runs_.end()) {
                         continue;
                       }
                       run_row& r = it->second;
                       if (r.owner != owner || r.epoch != ref.epoch) {
                         lost.push_back(ref.run_id);
                       } else if (!is_final(r.status)) {
                         r.lease_until = lease_until_us;
                       }
                     }
                     sort_ids(lost);
                     return lost;
                   });
  }

  expected<bool, store_error> write_dead_letters(
      const std::vector<dead_letter_row>& rows) override {
    return guarded("memory store write_dead_letters", [&]() -> expected<bool, store_error> {
      std::vector<dead_letter_row> kept;
      kept.reserve(rows.size());
      for (const auto& r : rows) {
        kept.push_back(storable(r));
      }
      std::lock_guard lock(mu_);
      dead_letters_.insert(dead_letters_.end(), std::make_move_iterator(kept.begin()),
                           std::make_move_iterator(kept.end()));
      return true;
    });
  }

  expected<std::vector<dead_letter_row>, store_error> list_dead_letters(
      std::size_t limit) override {
    return guarded("memory store list_dead_letters",
                   [&]() -> expected<std::vector<dead_letter_row>, store_error> {
                     std::lock_guard lock(mu_);
                     const std::size_t n =
                         limit == 0 ? dead_letters_.size() : std::min(limit, dead_letters_.size());
                     return std::vector<dead_letter_row>(
                         dead_letters_.rbegin(),
                         dead_letters_.rbegin() + static_cast<std::ptrdiff_t>(n));
                   });
  }

  expected<request_key_row, store_error> remember_request(const request_key_row& row,
                                                          std::int64_t expired_before_us) override {
    return guarded(
        "memory store remember_request", [&]() -> expected<request_key_row, store_error> {
          if (auto r = check_request_row(row); !r) {
            return make_unexpected(r.error());
          }
          std::lock_guard lock(mu_);
          auto [it, inserted] = requests_.try_emplace(std::make_pair(row.key, row.scope), row);
          if (!inserted && it->second.created_at < expired_before_us) {
            it->second = row;  // expired: replaced
          }
          return it->second;
        });
  }

  expected<std::optional<request_key_row>, store_error> find_request(
      std::string_view key, std::string_view scope) override {
    return guarded("memory store find_request",
                   [&]() -> expected<std::optional<request_key_row>, store_error> {
                     if (auto r = check_request_key(key, scope); !r) {
                       return make_unexpected(r.error());
                     }
                     std::lock_guard lock(mu_);
                     auto it = requests_.find(std::make_pair(std::string(key), std::string(scope)));
                     if (it == requests_.end()) {
                       return std::optional<request_key_row>();
                     }
                     return std::optional<request_key_row>(it->second);
                   });
  }

  expected<std::size_t, store_error> forget_requests(std::int64_t before_us) override {
    return guarded("memory store forget_requests", [&]() -> expected<std::size_t, store_error> {
      std::lock_guard lock(mu_);
      return static_cast<std::size_t>(std::erase_if(
          requests_, [&](const auto& kv) { return kv.second.created_at < before_us; }));
    });
  }

  expected<std::vector<run_row>, store_error> list_runs(const run_query& q) override {
    return guarded("memory store list_runs", [&]() -> expected<std::vector<run_row>, store_error> {
      std::vector<run_row> out;
      const bool paged = !q.before_run_id.empty();
      // (started_at, run_id) < the cursor, run ids compared bytewise as SQLite and PostgreSQL
      // ("C" collation) compare them.
      auto before_cursor = [&](const run_row& r) {
        return r.started_at < q.before_started_at ||
               (r.started_at == q.before_started_at &&
                r.run_id.str() < std::string_view(q.before_run_id));
      };
      {
        std::lock_guard lock(mu_);
        for (const auto& [id, r] : runs_) {
          if ((!q.status || r.status == *q.status) &&
              (q.workflow.empty() || r.workflow == q.workflow) &&
              (q.parent_run_id.empty() || r.parent_run_id == q.parent_run_id) &&
              (!q.top_level || r.parent_run_id.empty()) && (!paged || before_cursor(r))) {
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
  // REQUIRES: mu_ is held. A new run is stored as given; an existing one keeps its owner, epoch
  // and lease (claim_run and renew_leases move them). A final status releases the lease.
  void upsert_run(const run_row& r) {
    auto [it, inserted] = runs_.try_emplace(r.run_id, r);
    if (inserted) {
      if (is_final(r.status)) {
        it->second.lease_until = 0;
      }
      return;
    }
    run_row& stored = it->second;
    std::string owner = std::move(stored.owner);
    const std::int64_t epoch = stored.epoch;
    const std::int64_t lease_until = is_final(r.status) ? 0 : stored.lease_until;
    stored = r;
    stored.owner = std::move(owner);
    stored.epoch = epoch;
    stored.lease_until = lease_until;
  }

  mutable std::mutex mu_;
  std::map<std::string, run_row, std::less<>> runs_;
  std::map<std::string, std::map<std::tuple<std::string, std::int64_t, int>, node_row>, std::less<>>
      nodes_;
  std::map<std::pair<std::string, std::string>, workflow_row> workflows_;
  std::map<std::string, cache_row, std::less<>> cache_;
  std::vector<dead_letter_row> dead_letters_;                                // oldest first
  std::map<std::pair<std::string, std::string>, request_key_row> requests_;  // by (key, scope)
};

}  // namespace

std::unique_ptr<store> make_memory_store() {
  return std::make_unique<memory_store>();
}

}  // namespace troupe::detail
