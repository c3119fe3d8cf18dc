#include "runtime/caches.hpp"

namespace troupe {

output_cache::output_cache(std::size_t entries, detail::query_store* store)
    : memory_(entries), store_(store) {}

json_ptr output_cache::load(const std::string& key) {
  if (auto v = memory_.find(key)) {
    return v;  // another run stored it meanwhile
  }
  auto row = store_->with([&](store& s) { return s.get_cache(key); });
  // A store that cannot answer is a miss: the task runs, which is always correct.
  if (!row || !*row || (*row)->kind != "output" || !(*row)->value) {
    return nullptr;
  }
  memory_.put(key, (*row)->value);
  return (*row)->value;
}

spec_cache::spec_cache(std::size_t entries, detail::query_store* store, plan_registry& plans)
    : memory_(entries), store_(store), plans_(plans) {}

plan_ptr spec_cache::lookup(const std::string& key) {
  if (auto p = memory_.find(key)) {
    return p;
  }
  if (!store_) {
    return nullptr;
  }
  auto row = store_->with([&](store& s) { return s.get_cache(key); });
  if (!row || !*row || (*row)->kind != "spec" || !(*row)->value) {
    return nullptr;
  }
  // A stored spec that no longer compiles (say, a task it names is gone) is a miss: the
  // generator runs again.
  auto p = plans_.compile_dynamic(*(*row)->value);
  if (!p) {
    return nullptr;
  }
  memory_.put(key, *p);
  return *p;
}

}  // namespace troupe
