#pragma once

// A store that passes every call to another one, so that a wrapper (a fault injector, a store
// shared between the engine and its writer, a test's spy) overrides only the calls it changes.

#include <memory>

#include "persistence/store.hpp"

namespace troupe {

class forwarding_store : public store {
 public:
  /// Shared rather than owned outright: the engine queries a memory:// store that its writer
  /// also holds through a forwarding_store. A std::unique_ptr converts.
  explicit forwarding_store(std::shared_ptr<store> inner);

  store& inner() const { return *inner_; }

  std::string describe() const override;
  expected<write_outcome, store_error> write(const write_batch& batch) override;
  expected<std::vector<run_row>, store_error> list_runs(const run_query& q) override;
  expected<std::optional<run_row>, store_error> get_run(std::string_view run_id) override;
  expected<std::vector<node_row>, store_error> node_rows(std::string_view run_id) override;
  expected<std::vector<run_row>, store_error> unfinished_runs() override;
  expected<claim_result, store_error> claim_run(std::string_view run_id, std::string_view owner,
                                                std::int64_t now_us,
                                                std::int64_t lease_until_us) override;
  expected<std::vector<std::string>, store_error> renew_leases(
      std::string_view owner, const std::vector<lease_ref>& runs,
      std::int64_t lease_until_us) override;
  expected<bool, store_error> write_dead_letters(const std::vector<dead_letter_row>& rows) override;
  expected<std::vector<dead_letter_row>, store_error> list_dead_letters(std::size_t limit) override;
  expected<request_key_row, store_error> remember_request(const request_key_row& row,
                                                          std::int64_t expired_before_us) override;
  expected<std::optional<request_key_row>, store_error> find_request(
      std::string_view key, std::string_view scope) override;
  expected<std::size_t, store_error> forget_requests(std::int64_t before_us) override;
  expected<std::optional<workflow_row>, store_error> get_workflow(
      std::string_view name, std::string_view version) override;
  expected<std::optional<cache_row>, store_error> get_cache(std::string_view key) override;
  expected<std::vector<cache_row>, store_error> list_cache(std::string_view workflow) override;
  expected<std::size_t, store_error> clear_cache(std::string_view workflow) override;
  void maintain() override;
  /// Installs it on the inner store, which is the one that writes.
  void set_write_yield(std::function<void()> yield) override;

 private:
  std::shared_ptr<store> inner_;
};

}  // namespace troupe
