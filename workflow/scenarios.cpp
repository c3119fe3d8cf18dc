#include "workflow/scenarios.hpp"

#include <utility>

namespace troupe::scenarios {

json::value chain(std::string name, int length, std::string_view task) {
  json::array nodes;
  for (int i = 0; i < length; ++i) {
    json::object node{{"id", "n" + std::to_string(i)}, {"task", task}};
    if (i > 0) {
      node["needs"] = json::array{json::value("n" + std::to_string(i - 1))};
    }
    nodes.push_back(std::move(node));
  }
  return json::object{{"name", std::move(name)}, {"nodes", std::move(nodes)}};
}

json::value fan(std::string name, int width) {
  json::array nodes;
  nodes.push_back(json::object{{"id", "src"}, {"task", "noop"}});
  json::array all;
  for (int i = 0; i < width; ++i) {
    std::string id = "w" + std::to_string(i);
    nodes.push_back(json::object{{"id", id}, {"task", "noop"}, {"needs", json::array{"src"}}});
    all.push_back(json::value(id));
  }
  nodes.push_back(json::object{{"id", "sink"}, {"task", "noop"}, {"needs", std::move(all)}});
  return json::object{{"name", std::move(name)}, {"nodes", std::move(nodes)}};
}

json::value w3(std::string name, std::string_view first_task, const json::value& first_with,
               bool memo) {
  json::array nodes;
  json::object first{{"id", "A"}, {"task", first_task}};
  if (!first_with.is_null()) {
    first["with"] = first_with;
  }
  nodes.push_back(std::move(first));
  json::array bs;
  for (int i = 1; i <= 8; ++i) {
    std::string id = "B" + std::to_string(i);
    nodes.push_back(json::object{{"id", id}, {"task", "noop"}, {"needs", json::array{"A"}}});
    bs.push_back(json::value(id));
  }
  nodes.push_back(json::object{{"id", "C"}, {"task", "noop"}, {"needs", std::move(bs)}});
  if (memo) {
    for (auto& n : nodes) {
      n.as_object()["cache"] = json::object{{"version", "v1"}};
    }
  }
  return json::object{{"name", std::move(name)}, {"nodes", std::move(nodes)}};
}

json::value w4(std::string name) {
  json::array nodes;
  json::array needs;
  for (int i = 0; i < 100; ++i) {
    std::string id = "r" + std::to_string(i);
    nodes.push_back(json::object{{"id", id}, {"task", "echo"}, {"with", "{{ inputs.blob }}"}});
    needs.push_back(json::value(id));
  }
  nodes.push_back(json::object{{"id", "each"},
                               {"task", "echo"},
                               {"needs", std::move(needs)},
                               {"for_each", "{{ range(1000) }}"},
                               {"with", "{{ item }}"}});
  return json::object{{"name", std::move(name)},
                      {"inputs", json::object{{"blob", json::object{{"type", "string"}}}}},
                      {"nodes", std::move(nodes)}};
}

}  // namespace troupe::scenarios
