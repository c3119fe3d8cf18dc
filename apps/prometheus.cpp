#include "apps/prometheus.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace troupe::cli {

namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// Label values joined by a separator no label value holds after escaping... any byte may appear
// in a value, so the key is length-prefixed instead: unambiguous, and cheap to build.
const std::string& series_key(label_values values) {
  thread_local std::string key;
  key.clear();
  for (std::string_view v : values) {
    key += std::to_string(v.size());
    key += ':';
    key += v;
  }
  return key;
}

// The key of the series that takes label combinations past a family's limit.
std::string other_key(std::size_t labels) {
  std::string key;
  for (std::size_t i = 0; i < labels; ++i) {
    key += "5:other";
  }
  return key;
}

std::vector<std::string> split_key(std::string_view key) {
  std::vector<std::string> out;
  while (!key.empty()) {
    auto colon = key.find(':');
    std::size_t n = std::stoul(std::string(key.substr(0, colon)));
    out.emplace_back(key.substr(colon + 1, n));
    key.remove_prefix(colon + 1 + n);
  }
  return out;
}

std::string labels_text(const std::vector<std::string>& names, const std::string& key,
                        const std::string& extra = {}) {
  std::string out;
  auto values = split_key(key);
  for (std::size_t i = 0; i < names.size() && i < values.size(); ++i) {
    out += out.empty() ? "{" : ",";
    out += names[i] + "=\"" + escape_label(values[i]) + "\"";
  }
  if (!extra.empty()) {
    out += out.empty() ? "{" : ",";
    out += extra;
  }
  if (!out.empty()) {
    out += "}";
  }
  return out;
}

std::string number(double v) {
  if (std::isinf(v)) {
    return v > 0 ? "+Inf" : "-Inf";
  }
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.9g", v);
  }
  return buf;
}

void header(std::string& out, const std::string& name, const std::string& type,
            const std::string& help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

counter_family::counter_family(std::string name, std::string help,
                               std::vector<std::string> labels, std::size_t max_series)
    : name_(std::move(name)),
      help_(std::move(help)),
      labels_(std::move(labels)),
      max_series_(max_series),
      other_key_(other_key(labels_.size())) {}

void counter_family::add(label_values values, double amount) {
  const std::string& key = series_key(values);
  std::lock_guard lock(mutex_);
  auto it = series_.find(std::string_view(key));
  if (it == series_.end()) {
    it = series_.emplace(series_.size() < max_series_ ? key : other_key_, 0.0).first;
  }
  it->second += amount;
}

void counter_family::render(std::string& out) const {
  header(out, name_, "counter", help_);
  std::lock_guard lock(mutex_);
  for (const auto& [values, v] : series_) {
    out += name_ + labels_text(labels_, values) + " " + number(v) + "\n";
  }
}

histogram_family::histogram_family(std::string name, std::string help,
                                   std::vector<std::string> labels, std::vector<double> bounds,
                                   std::size_t max_series)
    : name_(std::move(name)),
      help_(std::move(help)),
      labels_(std::move(labels)),
      bounds_(std::move(bounds)),
      max_series_(max_series),
      other_key_(other_key(labels_.size())) {}

void histogram_family::observe(label_values values, double value) {
  std::size_t b = static_cast<std::size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  const std::string& key = series_key(values);
  std::lock_guard lock(mutex_);
  auto it = series_.find(std::string_view(key));
  if (it == series_.end()) {
    it = series_.emplace(series_.size() < max_series_ ? key : other_key_, series{}).first;
    if (it->second.buckets.empty()) {
      it->second.buckets.assign(bounds_.size() + 1, 0);
    }
  }
  auto& s = it->second;
  ++s.buckets[b];
  s.sum += value;
  ++s.count;
}

void histogram_family::render(std::string& out) const {
  header(out, name_, "histogram", help_);
  std::lock_guard lock(mutex_);
  for (const auto& [values, s] : series_) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= bounds_.size(); ++i) {
      cumulative += s.buckets[i];
      std::string le = i < bounds_.size() ? number(bounds_[i]) : "+Inf";
      out += name_ + "_bucket" + labels_text(labels_, values, "le=\"" + le + "\"") + " " +
             number(static_cast<double>(cumulative)) + "\n";
    }
    out += name_ + "_sum" + labels_text(labels_, values) + " " + number(s.sum) + "\n";
    out += name_ + "_count" + labels_text(labels_, values) + " " +
           number(static_cast<double>(s.count)) + "\n";
  }
}

void render_single(std::string& out, const std::string& name, const std::string& type,
                   const std::string& help, double value) {
  header(out, name, type, help);
  out += name + " " + number(value) + "\n";
}

std::vector<double> latency_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

}  // namespace troupe::cli
