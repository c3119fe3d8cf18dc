#include "persistence/forwarding_store.hpp"

#include <utility>

namespace troupe {

forwarding_store::forwarding_store(std::shared_ptr<store> inner) : inner_(std::move(inner)) {}

std::string forwarding_store::describe() const {
  return inner_->describe();
}
expected<write_outcome, store_error> forwarding_store::write(const write_batch& batch) {
  return inner_->write(batch);
}
expected<std::vector<run_row>, store_error> forwarding_store::list_runs(const run_query& q) {
  return inner_->list_runs(q);
}
expected<std::optional<run_row>, store_error> forwarding_store::get_run(std::string_view run_id) {
  return inner_->get_run(run_id);
}
expected<std::vector<node_row>, store_error> forwarding_store::node_rows(std::string_view run_id) {
  return inner_->node_rows(run_id);
}
expected<std::vector<run_row>, store_error> forwarding_store::unfinished_runs() {
  return inner_->unfinished_runs();
}
expected<claim_result, store_error> forwarding_store::claim_run(std::string_view run_id,
                                                                std::string_view owner,
                                                                std::int64_t now_us,
                                                                std::int64_t lease_until_us) {
  return inner_->claim_run(run_id, owner, now_us, lease_until_us);
}
expected<std::vector<std::string>, store_error> forwarding_store::renew_leases(
    std::string_view owner, const std::vector<lease_ref>& runs, std::int64_t lease_until_us) {
  return inner_->renew_leases(owner, runs, lease_until_us);
}
expected<bool, store_error> forwarding_store::write_dead_letters(
    const std::vector<dead_letter_row>& rows) {
  return inner_->write_dead_letters(rows);
}
expected<std::vector<dead_letter_row>, store_error> forwarding_store::list_dead_letters(
    std::size_t limit) {
  return inner_->list_dead_letters(limit);
}
expected<request_key_row, store_error> forwarding_store::remember_request(
    const request_key_row& row, std::int64_t expired_before_us) {
  return inner_->remember_request(row, expired_before_us);
}
expected<std::optional<request_key_row>, store_error> forwarding_store::find_request(
    std::string_view key, std::string_view scope) {
  return inner_->find_request(key, scope);
}
expected<std::size_t, store_error> forwarding_store::forget_requests(std::int64_t before_us) {
  return inner_->forget_requests(before_us);
}
expected<std::optional<workflow_row>, store_error> forwarding_store::get_workflow(
    std::string_view name, std::string_view version) {
  return inner_->get_workflow(name, version);
}
expected<std::optional<cache_row>, store_error> forwarding_store::get_cache(std::string_view key) {
  return inner_->get_cache(key);
}
expected<std::vector<cache_row>, store_error> forwarding_store::list_cache(
    std::string_view workflow) {
  return inner_->list_cache(workflow);
}
expected<std::size_t, store_error> forwarding_store::clear_cache(std::string_view workflow) {
  return inner_->clear_cache(workflow);
}
void forwarding_store::maintain() {
  inner_->maintain();
}
void forwarding_store::set_write_yield(std::function<void()> yield) {
  inner_->set_write_yield(std::move(yield));
}

}  // namespace troupe
