#pragma once

// A fixed-size persistent vector (32-way bit-partitioned trie). Written here because Debian 12
// packages no persistent-collection library; see context.hpp for why the context needs one.
//
// Contract: copy is O(1) (one shared_ptr); set() is O(log32 n) and returns a new version that
// shares every untouched subtree and every untouched value with the old one; get() is
// O(log32 n). Constructing a vector of any size allocates nothing: subtrees never written are
// absent and read as default-constructed values. Versions are immutable and may be read from
// any thread; each version keeps alive everything it shares, so it outlives the version it was
// derived from.

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
  /// The stored value, or a default-constructed T for a slot never set (or out of range). The
  /// reference stays valid while any version sharing that value lives.
  const T& get(std::size_t i) const;
  /// The stored value, or null for a slot never set (or out of range).
  const T* find(std::size_t i) const;
  /// Throws std::out_of_range when i >= size().
  pvector set(std::size_t i, T value) const;
  /// Like `*this = set(i, value)`, but nodes on the path that no other version shares are
  /// updated in place instead of copied. Other versions never observe the change: a node is
  /// written only while this version is its sole owner (use_count() == 1, which no other thread
  /// can raise without a reference of its own). Throws std::out_of_range when i >= size().
  void assign(std::size_t i, T value);

  /// True when both versions hold the very same stored value for slot i (shared, not an equal
  /// copy). A slot never set holds no storage, so it is never reported as shared.
  bool shares_leaf(const pvector& other, std::size_t i) const;
  bool same_root(const pvector& other) const { return root_ == other.root_; }

 private:
  static constexpr std::size_t bits = 5;
  static constexpr std::size_t width = std::size_t{1} << bits;
  static constexpr std::size_t mask = width - 1;

  // Inner nodes hold only children and leaves hold only values: neither carries the other's
  // 32 slots. The node type at a level follows from the depth, so no virtual dispatch or tag is
  // needed; shared_ptr remembers the real type for destruction.
  struct node_base {};
  using node_ptr = std::shared_ptr<const node_base>;
  using value_ptr = std::shared_ptr<const T>;

  struct inner_node : node_base {
    std::array<node_ptr, width> children;  // null: subtree never written
  };
  // Each value is boxed: copying a leaf on the update path then costs one pointer copy per slot
  // whatever T is, and an untouched slot of a copied leaf is still the very same storage (which
  // shares_leaf reports, and which a reader's reference keeps pointing at).
  struct leaf_node : node_base {
    std::array<value_ptr, width> values;  // null: slot never set
  };

  const value_ptr* slot_for(std::size_t i) const;
  static node_ptr set_in(const node_base* n, std::size_t shift, std::size_t i, value_ptr value);
  static void assign_in(node_ptr& n, std::size_t shift, std::size_t i, value_ptr value);
  static const T& default_value();

  node_ptr root_;
  std::size_t size_ = 0;
  std::size_t shift_ = 0;  // bits * (depth - 1)
};

}  // namespace troupe

#include "workflow/detail/pvector_impl.hpp"
