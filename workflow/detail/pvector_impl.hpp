#pragma once
// Implementation of troupe::pvector (included from workflow/pvector.hpp only).

#include <stdexcept>
#include <utility>

namespace troupe {

template <class T>
pvector<T>::pvector(std::size_t size) : size_(size) {
  // Enough levels that width^depth covers size; the root stays null until the first set().
  std::size_t capacity = width;
  while (capacity < size_) {
    capacity <<= bits;
    shift_ += bits;
  }
}

template <class T>
const T& pvector<T>::default_value() {
  static const T value{};  // initialised once, thread-safely; never written afterwards
  return value;
}

template <class T>
const typename pvector<T>::value_ptr* pvector<T>::slot_for(std::size_t i) const {
  if (i >= size_) {
    return nullptr;
  }
  const node_base* n = root_.get();
  for (std::size_t shift = shift_; shift > 0 && n != nullptr; shift -= bits) {
    n = static_cast<const inner_node*>(n)->children[(i >> shift) & mask].get();
  }
  if (n == nullptr) {
    return nullptr;
  }
  return &static_cast<const leaf_node*>(n)->values[i & mask];
}

template <class T>
const T* pvector<T>::find(std::size_t i) const {
  const value_ptr* slot = slot_for(i);
  return slot != nullptr ? slot->get() : nullptr;
}

template <class T>
const T& pvector<T>::get(std::size_t i) const {
  const T* value = find(i);
  return value != nullptr ? *value : default_value();
}

template <class T>
typename pvector<T>::node_ptr pvector<T>::set_in(const node_base* n, std::size_t shift,
                                                 std::size_t i, value_ptr value) {
  if (shift == 0) {
    auto leaf = n != nullptr ? std::make_shared<leaf_node>(*static_cast<const leaf_node*>(n))
                             : std::make_shared<leaf_node>();
    leaf->values[i & mask] = std::move(value);
    return leaf;
  }
  auto inner = n != nullptr ? std::make_shared<inner_node>(*static_cast<const inner_node*>(n))
                            : std::make_shared<inner_node>();
  node_ptr& child = inner->children[(i >> shift) & mask];
  child = set_in(child.get(), shift - bits, i, std::move(value));
  return inner;
}

template <class T>
pvector<T> pvector<T>::set(std::size_t i, T value) const {
  if (i >= size_) {
    throw std::out_of_range("pvector::set: index out of range");
  }
  pvector result;
  result.size_ = size_;
  result.shift_ = shift_;
  result.root_ = set_in(root_.get(), shift_, i, std::make_shared<const T>(std::move(value)));
  return result;
}

template <class T>
void pvector<T>::assign_in(node_ptr& n, std::size_t shift, std::size_t i, value_ptr value) {
  if (n == nullptr || n.use_count() != 1) {
    n = set_in(n.get(), shift, i, std::move(value));
    return;
  }
  // Sole owner: the node is reachable only through this version, so writing it is invisible to
  // every other version (nodes are const to readers; this is the one writer).
  if (shift == 0) {
    const_cast<leaf_node*>(static_cast<const leaf_node*>(n.get()))->values[i & mask] =
        std::move(value);
    return;
  }
  auto* inner = const_cast<inner_node*>(static_cast<const inner_node*>(n.get()));
  assign_in(inner->children[(i >> shift) & mask], shift - bits, i, std::move(value));
}

template <class T>
void pvector<T>::assign(std::size_t i, T value) {
  if (i >= size_) {
    throw std::out_of_range("pvector::assign: index out of range");
  }
  assign_in(root_, shift_, i, std::make_shared<const T>(std::move(value)));
}

template <class T>
bool pvector<T>::shares_leaf(const pvector& other, std::size_t i) const {
  const T* mine = find(i);
  return mine != nullptr && mine == other.find(i);
}

}  // namespace troupe
