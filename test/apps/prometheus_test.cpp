#define BOOST_TEST_MODULE prometheus
#include <boost/test/unit_test.hpp>

#include <string>

#include "apps/prometheus.hpp"

using troupe::cli::counter_family;
using troupe::cli::histogram_family;

namespace {
std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++n;
  }
  return n;
}
}  // namespace

BOOST_AUTO_TEST_CASE(counters_render_each_series_with_its_labels) {
  counter_family c("runs_total", "Runs.", {"workflow", "status"});
  c.add({"a", "succeeded"});
  c.add({"a", "succeeded"}, 2);
  c.add({"b\"x", "failed"});
  std::string out;
  c.render(out);
  BOOST_TEST(out.find("# TYPE runs_total counter") != std::string::npos, out);
  BOOST_TEST(out.find("runs_total{workflow=\"a\",status=\"succeeded\"} 3\n") != std::string::npos,
             out);
  BOOST_TEST(out.find("runs_total{workflow=\"b\\\"x\",status=\"failed\"} 1\n") != std::string::npos,
             out);
}

// Label values come from clients (workflow names): a family keeps at most max_series series
// and counts the rest in one whose labels are all "other", so nothing is lost and memory and
// the exposition stay bounded.
BOOST_AUTO_TEST_CASE(label_combinations_past_the_limit_share_one_series) {
  counter_family c("runs_total", "Runs.", {"workflow", "status"}, 3);
  histogram_family h("seconds", "Durations.", {"workflow"}, {0.1, 1}, 3);
  for (int i = 0; i < 100; ++i) {
    c.add({"w" + std::to_string(i), "succeeded"});
    h.observe({"w" + std::to_string(i)}, 0.5);
  }
  std::string out;
  c.render(out);
  BOOST_TEST(count_of(out, "runs_total{") == 4u, out);
  BOOST_TEST(out.find("runs_total{workflow=\"other\",status=\"other\"} 97\n") != std::string::npos,
             out);
  std::string hist;
  h.render(hist);
  BOOST_TEST(count_of(hist, "seconds_count{") == 4u, hist);
  BOOST_TEST(hist.find("seconds_count{workflow=\"other\"} 97\n") != std::string::npos, hist);
  BOOST_TEST(hist.find("seconds_bucket{workflow=\"other\",le=\"1\"} 97\n") != std::string::npos,
             hist);
}
