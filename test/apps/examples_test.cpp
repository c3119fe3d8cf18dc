#define BOOST_TEST_MODULE apps_examples
#include <boost/test/unit_test.hpp>

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "test/apps/process.hpp"
#include "workflow/json.hpp"

// Every workflow in examples/ is run through the real binary, as its sidecar `<name>.test.json`
// says: { "args": [...], "exit_code": n, "status": "...", "outputs": {...},
//         "nodes": { "id": "status" | { "status", "attempts", "items", "cache" } },
//         "error_contains": "..." }.
// In args, ${EXAMPLES} stands for the examples directory (the child runs in a temp directory).

namespace json = boost::json;
namespace fs = std::filesystem;
namespace utf = boost::unit_test;

namespace {

const fs::path examples_dir = fs::path(TROUPE_SOURCE_DIR) / "examples";
constexpr std::string_view sidecar_suffix = ".test.json";

bool is_sidecar(const fs::path& p) {
  const std::string name = p.filename().string();
  return name.size() > sidecar_suffix.size() &&
         name.compare(name.size() - sidecar_suffix.size(), sidecar_suffix.size(), sidecar_suffix) ==
             0;
}

/// The example workflows (not the sidecars), by stem, sorted.
std::vector<std::string> example_names() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(examples_dir)) {
    const fs::path& p = entry.path();
    if (entry.is_regular_file() && p.extension() == ".json" && !is_sidecar(p)) {
      names.push_back(p.stem().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> sidecar_names() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(examples_dir)) {
    if (entry.is_regular_file() && is_sidecar(entry.path())) {
      const std::string file = entry.path().filename().string();
      names.push_back(file.substr(0, file.size() - sidecar_suffix.size()));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

json::value read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  auto v = troupe::parse_json(text.str());
  // The message of BOOST_TEST is built even when the check passes: no error() on success.
  BOOST_TEST_REQUIRE(v.has_value(), path.string() << ": " << (v ? "" : v.error().message));
  return *v;
}

std::string substitute(std::string arg) {
  const std::string key = "${EXAMPLES}";
  for (std::size_t at; (at = arg.find(key)) != std::string::npos;) {
    arg.replace(at, key.size(), examples_dir.string());
  }
  return arg;
}

const json::object* find_node(const json::array& nodes, std::string_view id) {
  for (const auto& n : nodes) {
    if (n.at("id").as_string() == id) {
      return &n.as_object();
    }
  }
  return nullptr;
}

void check_example(const std::string& name) {
  const json::value sidecar = read_json(examples_dir / (name + ".test.json"));
  BOOST_TEST_REQUIRE(sidecar.is_object());
  const json::object& expect = sidecar.as_object();
  // A misspelt expectation would otherwise check nothing and pass.
  static const std::set<std::string> known = {"args",    "exit_code", "status",
                                              "outputs", "nodes",     "error_contains"};
  for (const auto& member : expect) {
    BOOST_TEST(known.count(std::string(member.key())) == 1u,
               "unknown sidecar field '" << member.key() << "'");
  }
  BOOST_TEST_REQUIRE(expect.contains("exit_code"));
  BOOST_TEST_REQUIRE(expect.contains("status"));

  std::vector<std::string> args = {"run", (examples_dir / (name + ".json")).string(), "--json"};
  if (const json::value* a = expect.if_contains("args")) {
    for (const auto& arg : a->as_array()) {
      args.push_back(substitute(std::string(arg.as_string())));
    }
  }
  troupe::test::temp_dir dir;
  const auto r = troupe::test::run_troupe(args, dir.path());
  // Every check below shows the child's stderr when it fails: that is where the why is.
  BOOST_TEST_CONTEXT("stderr of troupe: " << r.err) {
    BOOST_TEST(r.exit_code == expect.at("exit_code").to_number<int>());
    auto parsed = troupe::parse_json(r.out);
    BOOST_TEST_REQUIRE(parsed.has_value(), "stdout is not JSON: " << r.out);
    const json::value& doc = *parsed;
    BOOST_TEST_REQUIRE(doc.is_object());

    BOOST_TEST(doc.at("status") == expect.at("status"), "error: " << doc.at("error"));
    if (const json::value* outputs = expect.if_contains("outputs")) {
      BOOST_TEST(doc.at("outputs") == *outputs, "outputs " << json::serialize(doc.at("outputs"))
                                                           << "\n   expected "
                                                           << json::serialize(*outputs));
    }
    if (const json::value* fragment = expect.if_contains("error_contains")) {
      const json::value& error = doc.at("error");
      BOOST_TEST_REQUIRE(error.is_string(), "error is " << error);
      BOOST_TEST(std::string(error.as_string()).find(fragment->as_string()) != std::string::npos,
                 error << " does not contain " << *fragment);
    }
    if (const json::value* nodes = expect.if_contains("nodes")) {
      const json::array& actual = doc.at("nodes").as_array();
      for (const auto& [id, want] : nodes->as_object()) {
        const json::object* node = find_node(actual, id);
        BOOST_TEST_REQUIRE(node != nullptr, "no node '" << id << "' in the result");
        const json::object fields =
            want.is_string() ? json::object{{"status", want}} : want.as_object();
        for (const auto& [field, value] : fields) {
          const json::value* got = node->if_contains(field);
          BOOST_TEST_REQUIRE(got != nullptr, "node '" << id << "' has no '" << field << "'");
          BOOST_TEST(*got == value,
                     "node '" << id << "' " << field << ": " << *got << ", expected " << value);
        }
      }
    }
  }
}

/// One test case per example, named after it, so that a failure says which example broke.
/// Registered during static initialisation, like the BOOST_AUTO_TEST_CASEs themselves.
struct example_registrar {
  example_registrar() {
    utf::test_suite* suite = BOOST_TEST_SUITE("each_example_runs_as_its_sidecar_says");
    for (const auto& name : example_names()) {
      if (!fs::exists(examples_dir / (name + ".test.json"))) {
        continue;  // reported by every_example_has_a_test_sidecar
      }
      suite->add(utf::make_test_case([name] { check_example(name); }, name, __FILE__, __LINE__), 0,
                 120);
    }
    utf::framework::master_test_suite().add(suite);
  }
};
const example_registrar registrar;

}  // namespace

BOOST_AUTO_TEST_CASE(every_example_has_a_test_sidecar, *utf::timeout(60)) {
  const auto examples = example_names();
  BOOST_TEST(!examples.empty());
  for (const auto& name : examples) {
    BOOST_TEST(fs::exists(examples_dir / (name + ".test.json")),
               "examples/" << name << ".json has no " << name << ".test.json");
  }
}

BOOST_AUTO_TEST_CASE(every_sidecar_belongs_to_an_example, *utf::timeout(60)) {
  for (const auto& name : sidecar_names()) {
    BOOST_TEST(fs::exists(examples_dir / (name + ".json")),
               "examples/" << name << ".test.json has no " << name << ".json");
  }
}

BOOST_AUTO_TEST_CASE(every_example_is_valid_and_explains_itself, *utf::timeout(60)) {
  for (const auto& name : example_names()) {
    const auto file = examples_dir / (name + ".json");
    troupe::test::temp_dir dir;
    const auto r = troupe::test::run_troupe({"validate", file.string()}, dir.path());
    BOOST_TEST(r.exit_code == 0, name << ": " << r.err);
    const json::value doc = read_json(file);
    const json::value* description = doc.as_object().if_contains("description");
    BOOST_TEST((description != nullptr && description->is_string() &&
                description->as_string().size() > 20),
               name << " has no description");
  }
}

BOOST_AUTO_TEST_CASE(the_demo_example_is_the_one_of_the_format_document, *utf::timeout(60)) {
  // scripts/demo runs examples/thumbnails.json in text mode with three urls.
  troupe::test::temp_dir dir;
  const auto r = troupe::test::run_troupe({"run", (examples_dir / "thumbnails.json").string(),
                                           "--input", R"(urls=["a.png","b.png","c.png"])"},
                                          dir.path());
  BOOST_TEST(r.exit_code == 0, r.err);
  BOOST_TEST(r.out.find("resize") != std::string::npos);
  BOOST_TEST(r.out.find("\"first\": \"a.png\"") != std::string::npos);
}
