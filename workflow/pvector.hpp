#pragma once

// A fixed-size persistent vector (32-way bit-partitioned trie). Written here because Debian 12
// packages no persistent-collection library; see context.hpp for why the context needs one.
//
// Contract: copy is O(1) (one shared_ptr); set() is O(log32 n) and returns a new version that
// shares every untouched subtree with the old one; get() is O(log32 n). Versions are immutable
// and may be read from any thread.

#include <array>
#include <cstddef>
#include <memory>

namespace troupe {

template <class T>
class pvector {
 public:
  pvector() = default;
  explicit pvector(std::size_t size);

  std::size_t size() const { return size_; }
  /// The stored value, or a default-constructed T for a slot never set.
  const T& get(std::size_t i) const;
  pvector set(std::size_t i, T value) const;

  /// True when both versions hold the very same leaf for slot i (shared, not copied).
  bool shares_leaf(const pvector& other, std::size_t i) const;
  bool same_root(const pvector& other) const { return root_ == other.root_; }

 private:
  static constexpr std::size_t bits = 5;
  static constexpr std::size_t width = std::size_t{1} << bits;
  static constexpr std::size_t mask = width - 1;

  struct node {
    std::array<std::shared_ptr<const node>, width> children;  // inner nodes
    std::array<T, width> values;                                // leaves
  };

  const node* leaf_for(std::size_t i) const;

  std::shared_ptr<const node> root_;
  std::size_t size_ = 0;
  std::size_t shift_ = 0;  // bits * (depth - 1)
};

}  // namespace troupe

#include "workflow/detail/pvector_impl.hpp"
