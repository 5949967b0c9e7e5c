// The config tree (factory/config_tree.h): YAML/JSON loading with locations, limits on hostile input,
// --set overrides, YAML/JSON output, "did you mean" and config-relative paths.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "temp_dir.h"
#include "factory/config_tree.h"
#include "runtime/error.h"
#include "testing.h"

using namespace xfr;
using xfr::testing::contains;
namespace fs = std::filesystem;

namespace {

using xfr::testing::TempDir;

// The message of the xfr::Error that f throws ("" if it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}


ConfigNode yaml(const std::string& text) { return parse_config_string(text, "yaml", "t.yaml"); }

}  // namespace

TEST_CASE("config_tree: YAML file loads with key order and 1-based line:col") {
  TempDir dir;
  const std::string path = dir.write("model.yaml",
                                     "model:\n"
                                     "  vocab_size: 256\n"
                                     "  stack_configs:\n"
                                     "    - block_type: encoder\n"
                                     "      num_layers: 4\n"
                                     "      multi_head_config:\n"
                                     "        attention: {name: scaled_dot_product, causal: true}\n"
                                     "train: {steps: 2000}\n");
  ConfigNode root = load_config_file(path);
  REQUIRE(root.is_map());
  CHECK(root.keys() == std::vector<std::string>{"model", "train"});
  const ConfigNode& model = root.at("model");
  CHECK(model.keys() == std::vector<std::string>{"vocab_size", "stack_configs"});
  CHECK(model.at("vocab_size").loc().file == path);
  CHECK(model.at("vocab_size").loc().line == 2);
  CHECK(model.at("vocab_size").loc().col == 15);
  CHECK(model.key_loc("vocab_size")->line == 2);
  CHECK(model.key_loc("vocab_size")->col == 3);

  const ConfigNode& stack = model.at("stack_configs");
  REQUIRE(stack.is_list());
  REQUIRE(stack.size() == 1);
  CHECK(stack.at(0).loc().line == 4);
  CHECK(stack.at(0).loc().col == 7);
  const ConfigNode* name = root.find_path("model.stack_configs[0].multi_head_config.attention.name");
  REQUIRE(name != nullptr);
  CHECK(name->text() == "scaled_dot_product");
  CHECK(name->loc().line == 7);
  CHECK(name->loc().col == 27);
  CHECK(to_string(name->loc()) == path + ":7:27");
  CHECK(root.find_path("model.stack_configs.0.num_layers")->text() == "4");
  CHECK(root.find_path("model.stack_configs.1") == nullptr);
  CHECK(root.find_path("model.nope") == nullptr);
  const ConfigNode& att = *root.find_path("model.stack_configs.0.multi_head_config.attention");
  CHECK(att.loc().line == 7);
  CHECK(att.loc().col == 20);  // the '{'
  CHECK(root.at("train").at("steps").as_int() == 2000);

  // .yml too, and a case-insensitive extension.
  CHECK(load_config_file(dir.write("a.yml", "x: 1\n")).at("x").text() == "1");
  CHECK(load_config_file(dir.write("b.YAML", "x: 2\n")).at("x").text() == "2");
  // An empty YAML file is a null tree.
  CHECK(load_config_file(dir.write("empty.yaml", "")).is_null());
}

TEST_CASE("config_tree: JSON file loads strictly with line:col, key order and typed scalars") {
  TempDir dir;
  const std::string path = dir.write("model.json",
                                     "{\n"
                                     "  \"model\": {\n"
                                     "    \"vocab_size\": 256,\n"
                                     "    \"stack_configs\": [\n"
                                     "      {\"dim_model\": 64, \"dropout\": 0.1, \"causal\": true, \"x\": null}\n"
                                     "    ],\n"
                                     "    \"name\": \"yes\"\n"
                                     "  },\n"
                                     "  \"a\": 1\n"
                                     "}\n");
  ConfigNode root = load_config_file(path);
  CHECK(root.keys() == std::vector<std::string>{"model", "a"});  // file order, not sorted
  const ConfigNode& model = root.at("model");
  CHECK(model.key_loc("vocab_size")->line == 3);
  CHECK(model.key_loc("vocab_size")->col == 5);
  CHECK(model.at("vocab_size").loc().line == 3);
  CHECK(model.at("vocab_size").loc().col == 19);
  CHECK(model.at("vocab_size").text() == "256");
  CHECK_FALSE(model.at("vocab_size").quoted());
  const ConfigNode& block = model.at("stack_configs").at(0);
  CHECK(block.loc().line == 5);
  CHECK(block.loc().col == 7);
  CHECK(block.at("dropout").text() == "0.1");
  CHECK(block.at("dropout").loc().col == 36);
  CHECK(block.at("causal").as_bool() == true);
  CHECK(block.at("x").is_null());
  CHECK(model.at("name").quoted());
  CHECK(model.at("name").text() == "yes");

  // Strict: comments, trailing commas and single quotes are JSON syntax errors, with line:col.
  std::string e = error_of([&] { load_config_file(dir.write("bad.json", "{\n  \"a\": 1,\n}\n")); });
  CHECK(contains(e, "bad.json:3:1"));
  CHECK(contains(e, "JSON syntax error"));
  e = error_of([&] { parse_config_string("{\"a\": 1} // c", "json", "c.json"); });
  CHECK(contains(e, "c.json:1:"));
  e = error_of([&] { parse_config_string("{'a': 1}", "json", "q.json"); });
  CHECK(contains(e, "q.json:1:2"));
}

TEST_CASE("config_tree: quoted and plain scalars keep their text; typed views follow the YAML 1.2 core schema") {
  ConfigNode n = yaml(
      "a: yes\n"
      "b: \"yes\"\n"
      "c: '1'\n"
      "d: 1\n"
      "e: |\n  text\n"
      "f: !!str 5\n"
      "g: 1e-3\n"
      "h: True\n"
      "i: 0x1F\n"
      "j: ~\n"
      "k:\n"
      "l: 1.5\n"
      "m: -.inf\n"
      "n: !!int 7\n");
  CHECK(n.at("a").text() == "yes");
  CHECK_FALSE(n.at("a").quoted());
  CHECK_FALSE(n.at("a").as_bool().has_value());  // 1.2 core: "yes" is a string; the schema may accept it
  CHECK(n.at("b").quoted());
  CHECK(n.at("b").text() == "yes");
  CHECK(n.at("c").quoted());
  CHECK_FALSE(n.at("c").as_int().has_value());  // a quoted "1" is a string
  CHECK(n.at("d").as_int() == 1);
  CHECK(n.at("d").as_double() == 1.0);
  CHECK(n.at("e").quoted());
  CHECK(n.at("e").text() == "text\n");
  CHECK(n.at("f").quoted());
  CHECK(n.at("g").as_double() == doctest::Approx(1e-3));
  CHECK_FALSE(n.at("g").as_int().has_value());
  CHECK(n.at("h").as_bool() == true);
  CHECK(n.at("i").as_int() == 31);
  CHECK(n.at("j").is_null());
  CHECK(n.at("k").is_null());
  CHECK(n.at("l").as_double() == 1.5);
  CHECK(std::isinf(*n.at("m").as_double()));
  CHECK(n.at("n").as_int() == 7);
  CHECK_FALSE(n.at("n").quoted());

  std::string e = error_of([] { yaml("x: !!int abc\n"); });
  CHECK(contains(e, "t.yaml:1:4"));
  CHECK(contains(e, "not a valid !!int"));
  e = error_of([] { yaml("x: !custom 1\n"); });
  CHECK(contains(e, "unsupported tag"));

  nlohmann::json j = to_json(n);
  CHECK(j["a"] == "yes");
  CHECK(j["b"] == "yes");
  CHECK(j["c"] == "1");
  CHECK(j["d"] == 1);
  CHECK(j["d"].is_number_integer());
  CHECK(j["g"].is_number_float());
  CHECK(j["h"] == true);
  CHECK(j["i"] == 31);
  CHECK(j["j"].is_null());
  CHECK(j["k"].is_null());
  CHECK(j["l"] == 1.5);
  CHECK(j["f"] == "5");
  CHECK(to_json(ConfigNode::make_scalar("18446744073709551615")).is_number_unsigned());
  CHECK(to_json(ConfigNode::make_scalar("1e999")).is_number_float());
  CHECK(to_json(ConfigNode::make_scalar("1.2.3")) == "1.2.3");
}

TEST_CASE("config_tree: duplicate keys are errors naming both places") {
  std::string e = error_of([] { yaml("a: 1\nb:\n  c: 1\n  c: 2\n"); });
  CHECK(contains(e, "t.yaml:4:3"));
  CHECK(contains(e, "duplicate key 'c'"));
  CHECK(contains(e, "line 3, column 3"));
  e = error_of([] { yaml("x: {k: 1, k: 2}\n"); });
  CHECK(contains(e, "t.yaml:1:11"));
  e = error_of([] { parse_config_string("{\"a\": {\"k\": 1,\n \"k\": 2}}", "json", "d.json"); });
  CHECK(contains(e, "d.json:2:2"));
  CHECK(contains(e, "duplicate key 'k'"));
  CHECK(contains(e, "line 1, column 8"));
  // A key quoted once and plain once is still the same key.
  CHECK(contains(error_of([] { yaml("a: 1\n\"a\": 2\n"); }), "duplicate key 'a'"));
  // Merge keys are not duplicates: the map's own keys win over merged ones.
  ConfigNode m = yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 5\n");
  CHECK(m.at("d").keys() == std::vector<std::string>{"x", "y"});
  CHECK(m.at("d").at("y").text() == "5");
  CHECK(m.at("d").at("x").text() == "1");
  // The API refuses duplicates too.
  ConfigNode map = ConfigNode::make_map();
  map.insert("k", ConfigNode::make_scalar("1"));
  CHECK(contains(error_of([&] { map.insert("k", ConfigNode::make_scalar("2")); }), "duplicate key 'k'"));
}

TEST_CASE("config_tree: nesting deeper than max_depth is refused with its location") {
  auto nested = [](int depth, const std::string& open, const std::string& close) {
    std::string s;
    for (int i = 0; i < depth; ++i) s += open;
    s += "1";
    for (int i = 0; i < depth; ++i) s += close;
    return s;
  };
  CHECK_NOTHROW(yaml(nested(64, "[", "]")));
  std::string e = error_of([&] { yaml(nested(65, "[", "]")); });
  CHECK(contains(e, "nesting deeper than 64"));
  CHECK(contains(e, "t.yaml:1:65"));
  CHECK_NOTHROW(parse_config_string(nested(64, "[", "]"), "json", "d.json"));
  e = error_of([&] { parse_config_string(nested(65, "{\"a\":", "}"), "json", "d.json"); });
  CHECK(contains(e, "nesting deeper than 64"));
  CHECK(contains(e, "d.json:1:"));
  // Block-style maps count the same way.
  std::string block;
  for (int i = 0; i < 65; ++i) block += std::string(std::size_t(2 * i), ' ') + "k:\n";
  block += std::string(130, ' ') + "v: 1\n";
  e = error_of([&] { yaml(block); });
  CHECK(contains(e, "nesting deeper than 64"));
  CHECK(contains(e, "t.yaml:65:"));
  // Hostile depth: refused early, no stack overflow, for both formats.
  const std::string deep = std::string(400000, '[') + std::string(400000, ']');
  CHECK(contains(error_of([&] { yaml(deep); }), "t.yaml:1:65: nesting deeper than 64"));
  CHECK(contains(error_of([&] { parse_config_string(deep, "json", "d.json"); }), "d.json:1:65: nesting deeper"));
  const std::string unclosed(900000, '[');  // malformed as well as deep: refused either way
  CHECK(contains(error_of([&] { yaml(unclosed); }), "[config] t.yaml:1:"));
  CHECK(contains(error_of([&] { parse_config_string(unclosed, "json", "d.json"); }), "d.json:1:65: nesting deeper"));
  // A configurable limit.
  ConfigLimits lim;
  lim.max_depth = 2;
  CHECK(contains(error_of([&] { parse_config_string("a: {b: {c: 1}}", "yaml", "l", lim); }), "deeper than 2"));
}

TEST_CASE("config_tree: files over the size cap are refused unread") {
  TempDir dir;
  std::string big = "a: \"" + std::string((1u << 20), 'x') + "\"\n";
  const std::string path = dir.write("big.yaml", big);
  std::string e = error_of([&] { load_config_file(path); });
  CHECK(contains(e, "big.yaml"));
  CHECK(contains(e, "limit is 1048576"));
  ConfigLimits lim;
  lim.max_file_bytes = 16;
  CHECK(error_of([&] { load_config_file(dir.write("s.json", "{\"a\": \"0123456789abcdef\"}")); }).empty());
  CHECK(contains(error_of([&] { load_config_file(dir.write("s2.json", "{\"a\": \"0123456789abcdef\"}"), lim); }),
                 "limit is 16"));
  CHECK(contains(error_of([&] { parse_config_string(std::string(17, ' '), "yaml", "s", lim); }), "limit is 16"));
  // Other refusals: unknown extension, missing file, a directory.
  CHECK(contains(error_of([&] { load_config_file(dir.write("c.txt", "a: 1")); }), "unsupported config file extension"));
  CHECK(contains(error_of([&] { load_config_file((dir.path / "missing.yaml").string()); }), "no such file"));
  fs::create_directories(dir.path / "d.yaml");
  CHECK(contains(error_of([&] { load_config_file((dir.path / "d.yaml").string()); }), "directory"));
  CHECK(contains(error_of([&] { parse_config_string("a: 1", "toml", "x"); }), "unknown config format"));
}

TEST_CASE("config_tree: a billion-laughs alias bomb is refused quickly by the node budget") {
  TempDir dir;
  const std::string bomb =
      "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
      "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
      "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
      "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
      "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
      "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
      "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
      "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
      "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
  const std::string path = dir.write("bomb.yaml", bomb);
  const auto t0 = std::chrono::steady_clock::now();
  std::string e = error_of([&] { load_config_file(path); });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(contains(e, "more than 100000 nodes"));
  CHECK(contains(e, "bomb.yaml:"));
  MESSAGE("alias bomb refused after " << secs << " s");  // the node budget, not a clock, is what the test checks
  // Aliases below the budget expand normally, each use a full copy located at the alias.
  ConfigNode ok = yaml("base: &x {p: 1}\nuse: [*x, *x]\n");
  CHECK(ok.at("use").size() == 2);
  CHECK(ok.at("use").at(1).at("p").text() == "1");
  CHECK(ok.at("use").at(1).loc().line == 2);
  // An alias inside the node it names is refused (yaml-cpp resolves the name before the node ends).
  CHECK_FALSE(error_of([] { yaml("a: &r [1, *r]\n"); }).empty());
  // A plain large document is refused by the same budget.
  ConfigLimits lim;
  lim.max_nodes = 50;
  std::string list = "[";
  for (int i = 0; i < 60; ++i) list += "1,";
  list += "1]";
  CHECK(contains(error_of([&] { parse_config_string(list, "yaml", "n", lim); }), "more than 50 nodes"));
  CHECK(contains(error_of([&] { parse_config_string(list, "json", "n", lim); }), "more than 50 nodes"));
}

TEST_CASE("config_tree: YAML parse errors name file:line:col") {
  TempDir dir;
  const std::string path = dir.write("broken.yaml", "model:\n  a: 1\n  b: [1, 2\n  c: 3\n");
  std::string e = error_of([&] { load_config_file(path); });
  CHECK(contains(e, "[config] " + path + ":"));
  CHECK(contains(e, "YAML syntax error"));
  std::string e2 = error_of([] { yaml("a: 1\n b: 2\n"); });
  CHECK(contains(e2, "t.yaml:2:3"));
  CHECK(contains(error_of([] { yaml("a: 1\n---\nb: 2\n"); }), "t.yaml:2:1"));
  CHECK(contains(error_of([] { yaml("[a, b]: 1\n"); }), "map key must be a scalar"));
  CHECK(contains(error_of([] { yaml("a: *nope\n"); }), "t.yaml:1:4"));
}

TEST_CASE("config_tree: --set overrides nested keys, list indices and flow values") {
  ConfigNode root = yaml(
      "model:\n"
      "  stack_configs:\n"
      "    - num_layers: 4\n"
      "      attention: {name: favor}\n"
      "    - num_layers: 6\n"
      "data: {path: a.txt}\n");
  apply_override(root, "model.stack_configs.0.num_layers=2", "--set");
  CHECK(root.find_path("model.stack_configs.0.num_layers")->text() == "2");
  CHECK(root.find_path("model.stack_configs.0.num_layers")->loc().file == "--set");
  CHECK(root.find_path("model.stack_configs.0.num_layers")->loc().line == 0);
  apply_override(root, "model.stack_configs[1].num_layers=3", "--set");
  CHECK(root.find_path("model.stack_configs.1.num_layers")->as_int() == 3);
  // Key order is kept when replacing.
  CHECK(root.at("model").at("stack_configs").at(0).keys() == std::vector<std::string>{"num_layers", "attention"});

  apply_override(root, "model.stack_configs.0.attention={name: nystrom, causal: true}", "--set");
  const ConfigNode& att = *root.find_path("model.stack_configs.0.attention");
  CHECK(att.keys() == std::vector<std::string>{"name", "causal"});
  CHECK(att.at("causal").as_bool() == true);
  CHECK(att.at("name").loc().file == "--set");
  apply_override(root, "train.milestones=[1, 2]", "--set");
  CHECK(root.find_path("train.milestones")->size() == 2);
  CHECK(root.find_path("train.milestones.1")->text() == "2");
  CHECK(root.key_loc("train")->file == "--set");
  apply_override(root, "data.name=\"1\"", "--set");
  CHECK(root.find_path("data.name")->quoted());
  apply_override(root, "data.url=http://host:80/x", "--set");
  CHECK(root.find_path("data.url")->text() == "http://host:80/x");
  apply_override(root, "data.path=", "--set");
  CHECK(root.find_path("data.path")->is_null());
  apply_override(root, "data.new.deep.key=yes", "--set");  // missing keys are created
  CHECK(root.find_path("data.new.deep.key")->text() == "yes");

  std::string e = error_of([&] { apply_override(root, "model.stack_configs.5.num_layers=2", "--set"); });
  CHECK(contains(e, "model.stack_configs[5]"));
  CHECK(contains(e, "past the end"));
  CHECK(contains(e, "2 items"));
  e = error_of([&] { apply_override(root, "model.stack_configs.first.num_layers=2", "--set"); });
  CHECK(contains(e, "is a list"));
  e = error_of([&] { apply_override(root, "model.stack_configs.0.num_layers.x=1", "--set"); });
  CHECK(contains(e, "'model.stack_configs[0].num_layers' is a scalar"));
  CHECK(contains(error_of([&] { apply_override(root, "no_equals_sign", "--set"); }), "key.path=value"));
  CHECK(contains(error_of([&] { apply_override(root, "=1", "--set"); }), "empty key path"));
  CHECK(contains(error_of([&] { apply_override(root, "a..b=1", "--set"); }), "malformed key path"));
  e = error_of([&] { apply_override(root, "x=[1, 2", "--set"); });
  CHECK(contains(e, "--set 'x=[1, 2'"));
  CHECK(contains(e, "column"));
  CHECK(contains(error_of([&] { apply_override(root, "x={a: 1, a: 2}", "--set"); }), "duplicate key 'a'"));
  CHECK(contains(error_of([&] { apply_override(root, "x=- 1", "--set"); }), "block collection"));

  // A null root becomes a map.
  ConfigNode empty;
  apply_override(empty, "a.b=1", "--set");
  CHECK(empty.find_path("a.b")->text() == "1");
}

TEST_CASE("config_tree: to_yaml round-trips trees, quoting exactly what needs it") {
  const std::string src =
      "model:\n"
      "  task: causal_lm\n"
      "  stack_configs:\n"
      "    - block_type: encoder\n"
      "      dims: [1, 2, [3, 4], {k: v}]\n"
      "      empty_list: []\n"
      "      empty_map: {}\n"
      "    - - nested\n"
      "      - - deeper\n"
      "    - null\n"
      "strings:\n"
      "  yes_plain: yes\n"
      "  yes_quoted: \"yes\"\n"
      "  one: '1'\n"
      "  colon: \"a: b\"\n"
      "  dash: \"- x\"\n"
      "  hash: \"#c\"\n"
      "  space_hash: \"a #b\"\n"
      "  empty: \"\"\n"
      "  lead: \" x\"\n"
      "  tab: \"a\\tb\"\n"
      "  newline: \"l1\\nl2\"\n"
      "  quote: 'it''s \"q\"'\n"
      "  backslash: \"c:\\\\dir\"\n"
      "  unicode: héllo ✓\n"
      "  url: http://x:80/y?a=1\n"
      "  negative: -1\n"
      "  flowish: a,b]c\n"
      "  null_text: \"null\"\n"
      "  ctrl: \"\\x01\\x7f\"\n"
      "  trailing_colon: \"a:\"\n"
      "  star: \"*x\"\n"
      "  inner_tab: a\tb c\n"
      "  tab_hash: \"a\\t#b\"\n"
      "keys:\n"
      "  \"a b\": 1\n"
      "  \"1\": 2\n"
      "  \"<<\": 3\n"
      "  \"null\": 4\n"
      "  \"k: v\": 5\n"
      "  \"\": 6\n";
  const ConfigNode a = yaml(src);
  const std::string out = to_yaml(a);
  const ConfigNode b = parse_config_string(out, "yaml", "out.yaml");
  CHECK(a == b);
  INFO(out);
  CHECK(contains(out, "model:\n  task: causal_lm\n  stack_configs:\n    - block_type: encoder\n"));
  CHECK(contains(out, "  yes_plain: yes\n"));
  CHECK(contains(out, "  yes_quoted: \"yes\"\n"));
  CHECK(contains(out, "      empty_list: []\n"));
  CHECK(contains(out, "    - - nested\n"));
  CHECK(to_yaml(b) == out);  // stable

  // The same for a JSON-loaded tree, and for trees built through the API.
  const ConfigNode j = parse_config_string("{\"a\": [1, \"2\", {\"b\": null}], \"c\": \"x: y\"}", "json", "j.json");
  CHECK(parse_config_string(to_yaml(j), "yaml", "j.yaml") == j);
  ConfigNode built = ConfigNode::make_map();
  built.set("name", ConfigNode::make_scalar("MLP"));
  built.set("list", ConfigNode::make_list()).push_back(ConfigNode::make_scalar("true", true));
  built.set("n", ConfigNode::make_scalar("3"));
  CHECK(to_yaml(built) == "name: MLP\nlist:\n  - \"true\"\nn: 3\n");
  CHECK(parse_config_string(to_yaml(built), "yaml", "b") == built);
  CHECK(to_yaml(ConfigNode()) == "null\n");
  CHECK(to_yaml(ConfigNode::make_scalar("x")) == "x\n");
}

TEST_CASE("config_tree: ConfigNode mutation, paths and kinds") {
  ConfigNode n = yaml("a: {b: 1, c: 2}\nl: [x, y]\n");
  CHECK(n.at("a").erase("b"));
  CHECK_FALSE(n.at("a").erase("b"));
  CHECK(n.at("a").keys() == std::vector<std::string>{"c"});
  n.at("a").set("c", ConfigNode::make_scalar("3"));
  CHECK(n.at("a").at("c").text() == "3");
  CHECK(n.at("a").key_loc("c")->line == 1);  // a replaced key keeps its location
  n.at("l").insert(1, ConfigNode::make_scalar("m"));
  n.at("l").set(0, ConfigNode::make_scalar("w"));
  n.at("l").erase(2);
  CHECK(n.at("l").size() == 2);
  CHECK(n.at("l").at(0).text() == "w");
  CHECK(n.at("l").at(1).text() == "m");
  CHECK(contains(error_of([&] { n.at("l").at(5); }), "out of range"));
  CHECK(contains(error_of([&] { n.at("l").text(); }), "expected a scalar, found a list"));
  std::string e = error_of([&] { n.at("a").at("cc"); });
  CHECK(contains(e, "missing key 'cc'"));
  CHECK(contains(e, "did you mean 'c'?"));

  CHECK(path_join("", "model") == "model");
  CHECK(path_join("model", "stack_configs") == "model.stack_configs");
  CHECK(path_join(path_join("stack_configs", std::size_t(1)), "multi_head_config") ==
        "stack_configs[1].multi_head_config");
  CHECK(path_join(path_join(path_join("stack_configs", 1), "multi_head_config"), "attention") + ".name" ==
        "stack_configs[1].multi_head_config.attention.name");
  CHECK(path_join("a", "x.y") == "a[\"x.y\"]");
  CHECK(path_join("a", "") == "a[\"\"]");

  SourceLoc l{"f.yaml", 3, 7};
  CHECK(to_string(l) == "f.yaml:3:7");
  CHECK(to_string(SourceLoc{"f.yaml", 3, 0}) == "f.yaml:3");
  CHECK(to_string(SourceLoc{"--set"}) == "--set");
  CHECK(SourceLoc{"--set"}.from_command_line());
  CHECK_FALSE(l.from_command_line());
}

TEST_CASE("config_tree: did_you_mean suggests close names only") {
  const std::vector<std::string> keys = {"num_layers", "dim_model", "residual_norm_style", "multi_head_config",
                                         "feedforward_config", "MLP"};
  CHECK(did_you_mean("num_layer", keys) == "did you mean 'num_layers'?");
  CHECK(did_you_mean("dim_modle", keys) == "did you mean 'dim_model'?");
  CHECK(did_you_mean("residual_norm", keys) == "");  // 6 edits on 13 letters: too far
  CHECK(did_you_mean("residual_nrom_style", keys) == "did you mean 'residual_norm_style'?");
  CHECK(did_you_mean("mlp", keys) == "did you mean 'MLP'?");  // case-only difference
  CHECK(did_you_mean("xyz", keys) == "");
  CHECK(did_you_mean("a", {"b"}) == "did you mean 'b'?");  // distance 1 <= max(1, 0)
  CHECK(did_you_mean("ab", {"cd"}) == "");
  CHECK(did_you_mean("anything", {}) == "");
  CHECK(did_you_mean("feedforward_confg", keys) == "did you mean 'feedforward_config'?");
}

TEST_CASE("config_tree: resolve_path is relative to the config file, or to cwd for --set") {
  TempDir dir;
  const std::string path = dir.write("sub/model.yaml", "data: {path: corpus.txt, abs: /data/x.bin, up: ../y.txt}\n");
  ConfigNode root = load_config_file(path);
  const ConfigNode& p = root.find_path("data.path") ? *root.find_path("data.path") : root;
  const std::string sub = (dir.path / "sub").lexically_normal().string();
  CHECK(resolve_path(p, p.text(), "/work/cwd") == sub + "/corpus.txt");
  const ConfigNode& up = *root.find_path("data.up");
  CHECK(resolve_path(up, up.text(), "/work/cwd") == (dir.path / "y.txt").lexically_normal().string());
  const ConfigNode& abs = *root.find_path("data.abs");
  CHECK(resolve_path(abs, abs.text(), "/work/cwd") == "/data/x.bin");

  apply_override(root, "data.path=other.txt", "--set");
  const ConfigNode& o = *root.find_path("data.path");
  CHECK(resolve_path(o, o.text(), "/work/cwd") == "/work/cwd/other.txt");

  // A config file named relative to the working directory.
  ConfigNode rel = parse_config_string("p: d/x.txt\n", "yaml", "configs/m.yaml");
  CHECK(resolve_path(rel.at("p"), "d/x.txt", "/home/u") == "/home/u/configs/d/x.txt");
  // Text parsed without a file name resolves against cwd.
  ConfigNode s = parse_config_string("p: x.txt\n", "yaml", "<embedded>");
  CHECK(resolve_path(s.at("p"), "x.txt", "/w") == "/w/x.txt");
  CHECK(resolve_path(s.at("p"), "", "/w") == "");
}
