// The example HTTP server (tools/xfrun_server.cpp), run as a separate process on an ephemeral port with a
// tiny model trained by the CLI: /health, embeddings and completions in OpenAI's shapes (equal to what the
// public API computes), JSON errors for malformed JSON, wrong types and limits (400), oversize bodies (413),
// unknown paths (404) and wrong methods (405), the server still serving afterwards, and a graceful stop on
// SIGTERM. Also the public API's tokenizer (Model::tokenizer/encode/decode) that the server uses.
// Without the server (no cpp-httplib) or the CLI, these report as skipped.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <xfrun/xfrun.h>

#include "cli_runner.h"
#include "temp_dir.h"

#ifdef XF_CLI_PATH

namespace {

using json = nlohmann::json;
using xfr::testing::contains;
using xfr::testing::read_text;
using xfr::testing::TempDir;

// The tiny text LM of the CLI tests, trained for 4 steps: returns the step folder.
std::string train_tiny(const TempDir& dir, const std::string& config = xfr::testing::kTinyTextLm) {
  std::string text;
  for (int i = 0; i < 4; ++i) text += "to be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n";
  dir.write("text.txt", text);
  dir.write("model.yaml", config);
  const auto r = xfr::testing::xfrun({"train", "--config", dir.file("model.yaml"), "--set", "runtime.out_dir=" + dir.file("run")});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  return dir.file("run/checkpoints/step_4");
}

}  // namespace

TEST_CASE("api: Model::tokenizer, encode and decode use the checkpoint's tokenizer; models without one say so") {
  TempDir dir;
  const std::string ckpt = train_tiny(dir);
  const xfrun::Model m = xfrun::Model::load_file(dir.file("model.yaml"), ckpt);
  CHECK(m.tokenizer() == "char");
  const std::vector<int32_t> ids = m.encode("to be");
  CHECK(ids.size() == 5);
  for (int32_t id : ids) CHECK((id >= 0 && id < m.vocab_size()));
  CHECK(m.decode(ids) == "to be");
  CHECK(m.decode({}).empty());
  CHECK_THROWS_WITH_AS(m.encode("Z"), doctest::Contains("not in the char tokenizer's vocabulary"), xfrun::Error);

  // A bare model.safetensors (no state.json): the char vocabulary comes from the config's text data.
  std::filesystem::copy_file(ckpt + "/model.safetensors", dir.file("bare.safetensors"));
  const xfrun::Model bare = xfrun::Model::load_file(dir.file("model.yaml"), dir.file("bare.safetensors"));
  CHECK(bare.tokenizer() == "char");
  CHECK(bare.encode("to be") == ids);

  // Synthetic token data: no tokenizer; encode and decode refuse with the reason.
  TempDir copy;
  std::string cfg = xfr::testing::kTinyTextLm;
  cfg.replace(cfg.find("data: {kind: text, path: text.txt,"), std::strlen("data: {kind: text, path: text.txt,"),
              "data: {kind: copy, num_symbols: 6,");
  cfg.replace(cfg.find("infer: {"), cfg.find('\n', cfg.find("infer: {")) - cfg.find("infer: {"), "infer: {max_new_tokens: 4}");
  const xfrun::Model tokens = xfrun::Model::load_file(copy.write("model.yaml", cfg), train_tiny(copy, cfg));
  CHECK(tokens.tokenizer().empty());
  CHECK_THROWS_WITH_AS(tokens.encode("ab"), doctest::Contains("no tokenizer"), xfrun::Error);
  CHECK_THROWS_WITH_AS(tokens.decode({1, 2}), doctest::Contains("no tokenizer"), xfrun::Error);
}

#endif  // XF_CLI_PATH

#if defined(XF_SERVER_PATH) && defined(XF_CLI_PATH)

namespace {

struct HttpReply {
  int status = 0;  // 0: no reply
  std::string headers, body;
  json j() const { return json::parse(body, nullptr, false); }
};

// One request on its own connection (Connection: close), over a plain socket so that malformed requests can
// be sent too. Times out after 30 s.
HttpReply http(int port, const std::string& method, const std::string& path, const std::string& body = "",
               bool with_body = true) {
  HttpReply r;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return r;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (with_body) req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  for (size_t sent = 0; sent < req.size();) {  // the server may answer (413) and close before reading it all
    const ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string in;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  while (in.rfind("HTTP/1.1 100", 0) == 0) in = in.substr(in.find("\r\n\r\n") + 4);  // 100 Continue
  const size_t sp = in.find(' '), end = in.find("\r\n\r\n");
  if (sp == std::string::npos || end == std::string::npos) return r;
  r.status = std::atoi(in.c_str() + sp + 1);
  r.headers = in.substr(0, end);
  r.body = in.substr(end + 4);
  return r;
}

// xfrun_server as a child process on an ephemeral port (--port 0; it prints the one it bound).
class ServerProcess {
 public:
  ServerProcess(const TempDir& dir, std::vector<std::string> args) : out_(dir.file("server.out")), err_(dir.file("server.err")) {
    args.insert(args.begin(), XF_SERVER_PATH);
    args.push_back("--port");
    args.push_back("0");
    pid_ = ::fork();
    if (pid_ == 0) {
      const int o = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, 1);
      ::dup2(e, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string text = read_text(out_);
      const size_t at = text.find("listening on http://127.0.0.1:");
      if (at != std::string::npos && text.find('\n', at) != std::string::npos) {
        port_ = std::atoi(text.c_str() + at + std::strlen("listening on http://127.0.0.1:"));
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  std::string stderr_text() const { return read_text(err_); }
  // SIGTERM, then the exit code (-1: killed by a signal or still running after 30 s).
  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// An error reply: the status and {"error": {"message", "type"}} with `part` in the message.
void check_error(const HttpReply& r, int status, const std::string& part) {
  CHECK_MESSAGE(r.status == status, r.status, " ", r.body);
  const json j = r.j();
  REQUIRE_MESSAGE((j.is_object() && j.contains("error") && j["error"].is_object()), r.body);
  CHECK(j["error"]["type"] == "invalid_request_error");
  REQUIRE(j["error"]["message"].is_string());
  CHECK_MESSAGE(contains(j["error"]["message"].get<std::string>(), part), j["error"]["message"], " lacks ", part);
}

}  // namespace

TEST_CASE("server: /health, embeddings and completions answer in OpenAI's shapes, equal to the public API's results") {
  TempDir dir;
  const std::string ckpt = train_tiny(dir);
  ServerProcess server(dir, {"--config", dir.file("model.yaml"), "--checkpoint", ckpt, "--threads", "2"});
  REQUIRE_MESSAGE(server.port() > 0, server.stderr_text());
  const int port = server.port();
  const xfrun::Model model = xfrun::Model::load_file(dir.file("model.yaml"), ckpt);
  xfrun::Session session(model, {4, 0, 1, false});

  const HttpReply health = http(port, "GET", "/health", "", false);
  REQUIRE_MESSAGE(health.status == 200, health.body);
  const json h = health.j();
  CHECK(h["status"] == "ok");
  CHECK(h["model"]["task"] == "causal_lm");
  CHECK(h["model"]["tokenizer"] == "char");
  CHECK(h["model"]["vocab_size"] == model.vocab_size());
  CHECK(h["model"]["max_length"] == 16);
  CHECK(h["model"]["hidden_size"] == 16);

  // Embeddings: a list of strings, and token ids; each the model's pooled output, printed exactly.
  const HttpReply e = http(port, "POST", "/v1/embeddings", R"({"input": ["to be", "or not"], "model": "x"})");
  REQUIRE_MESSAGE(e.status == 200, e.body);
  const json ej = e.j();
  CHECK(ej["object"] == "list");
  CHECK(ej["model"] == "model");  // the config file's name
  REQUIRE(ej["data"].size() == 2);
  CHECK(ej["usage"]["prompt_tokens"] == 11);
  CHECK(ej["usage"]["total_tokens"] == 11);
  const auto expect = session.forward({model.encode("to be"), model.encode("or not")}, xfrun::Output::pooled);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(ej["data"][i]["object"] == "embedding");
    CHECK(ej["data"][i]["index"] == i);
    const auto v = ej["data"][i]["embedding"].get<std::vector<float>>();
    CHECK(v == expect[i].data);
  }
  const std::vector<int32_t> ids = model.encode("to be");
  const HttpReply e2 = http(port, "POST", "/v1/embeddings", json{{"input", ids}}.dump());
  REQUIRE_MESSAGE(e2.status == 200, e2.body);
  CHECK(e2.j()["data"][0]["embedding"].get<std::vector<float>>() == expect[0].data);
  const HttpReply e3 = http(port, "POST", "/v1/embeddings", R"({"input": "to be", "encoding_format": "base64"})");
  REQUIRE_MESSAGE(e3.status == 200, e3.body);
  CHECK(e3.j()["data"][0]["embedding"].get<std::string>().size() == (16 * 4 + 2) / 3 * 4);

  // Completions: greedy equals Session::generate; a stop string cuts the text; a seed repeats a sample.
  xfrun::GenerateOptions g;
  g.max_new_tokens = 6;
  const std::string greedy = model.decode(session.generate(ids, g).tokens);
  REQUIRE(greedy.size() == 6);
  const HttpReply c = http(port, "POST", "/v1/completions", R"({"prompt": "to be", "max_tokens": 6, "temperature": 0})");
  REQUIRE_MESSAGE(c.status == 200, c.body);
  const json cj = c.j();
  CHECK(cj["object"] == "text_completion");
  CHECK(cj["id"].get<std::string>().rfind("cmpl-", 0) == 0);
  CHECK(cj["created"].is_number_integer());
  REQUIRE(cj["choices"].size() == 1);
  CHECK(cj["choices"][0]["text"] == greedy);
  CHECK(cj["choices"][0]["index"] == 0);
  CHECK(cj["choices"][0]["finish_reason"] == "length");
  CHECK(cj["usage"]["prompt_tokens"] == 5);
  CHECK(cj["usage"]["completion_tokens"] == 6);
  CHECK(cj["usage"]["total_tokens"] == 11);
  const std::string stop = greedy.substr(3, 1);
  const HttpReply cs = http(port, "POST", "/v1/completions",
                            json{{"prompt", "to be"}, {"max_tokens", 6}, {"temperature", 0}, {"stop", {stop}}}.dump());
  REQUIRE_MESSAGE(cs.status == 200, cs.body);
  CHECK(cs.j()["choices"][0]["text"] == greedy.substr(0, greedy.find(stop)));
  CHECK(cs.j()["choices"][0]["finish_reason"] == "stop");
  const std::string sampled = R"({"prompt": [[1, 2], "to"], "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 7})";
  const HttpReply s1 = http(port, "POST", "/v1/completions", sampled), s2 = http(port, "POST", "/v1/completions", sampled);
  REQUIRE_MESSAGE(s1.status == 200, s1.body);
  REQUIRE(s1.j()["choices"].size() == 2);
  CHECK(s1.j()["choices"] == s2.j()["choices"]);
  CHECK(s1.j()["choices"][1]["index"] == 1);

  CHECK(server.stop() == 0);
  CHECK(contains(server.stderr_text(), "SIGTERM: stopping"));
}

TEST_CASE("server: malformed JSON, wrong types and limits get 400, oversize 413, unknown paths 404, wrong methods 405; "
          "the server keeps serving") {
  TempDir dir;
  const std::string ckpt = train_tiny(dir);
  ServerProcess server(dir, {"--config", dir.file("model.yaml"), "--checkpoint", ckpt, "--threads", "1", "--max-body-bytes",
                             "4096", "--max-inputs", "4", "--max-tokens-cap", "8"});
  REQUIRE_MESSAGE(server.port() > 0, server.stderr_text());
  const int port = server.port();

  check_error(http(port, "POST", "/v1/embeddings", R"({"input": ["to", )"), 400, "not valid JSON");
  check_error(http(port, "POST", "/v1/completions", "\x01\xff garbage"), 400, "not valid JSON");
  check_error(http(port, "POST", "/v1/embeddings", ""), 400, "not valid JSON");
  check_error(http(port, "POST", "/v1/embeddings", std::string(2000, '[')), 400, "not valid JSON");
  check_error(http(port, "POST", "/v1/embeddings", R"([1, 2])"), 400, "must be a JSON object");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": 5})"), 400, "'input' must be a string");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": {"a": 1}})"), 400, "'input' must be a string");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": ["to", 3]})"), 400, "input[1] is an integer");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": [1, 2.5]})"), 400, "input[1] must be an integer token id");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": [1, 100000]})"), 400, "outside 0..");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": [1, -1]})"), 400, "outside 0..");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": []})"), 400, "must not be an empty list");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": ""})"), 400, "is empty");
  check_error(http(port, "POST", "/v1/embeddings", R"({})"), 400, "'input' is required");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": "ZZZ"})"), 400, "not in the char tokenizer's vocabulary");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": "to", "encoding_format": 3})"), 400, "'encoding_format' must be a string");
  check_error(http(port, "POST", "/v1/embeddings", R"({"input": ["a", "b", "c", "d", "e"]})"), 400, "--max-inputs");
  check_error(http(port, "POST", "/v1/embeddings", json{{"input", std::string(17, 't')}}.dump()), 400, "--max-input-tokens");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "max_tokens": "5"})"), 400, "'max_tokens' must be an integer");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "max_tokens": 9})"), 400, "--max-tokens-cap");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "max_tokens": -1})"), 400, "'max_tokens' is -1");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "temperature": "hot"})"), 400, "'temperature' must be a number");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "temperature": 3})"), 400, "'temperature' is 3");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "top_p": 0})"), 400, "'top_p'");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "seed": 1.5})"), 400, "'seed' must be an integer");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "stop": 4})"), 400, "'stop' must be a string");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "stop": ["a", "b", "c", "d", "e"]})"), 400, "at most 4");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "stream": true})"), 400, "'stream' is not supported");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": "to", "n": 2})"), 400, "'n' is not supported");
  check_error(http(port, "POST", "/v1/completions", R"({"prompt": null})"), 400, "'prompt' is required");

  // Oversize: 413 whether or not the body is JSON; the message names the limit.
  check_error(http(port, "POST", "/v1/embeddings", json{{"input", std::string(5000, 't')}}.dump()), 413, "4096 bytes");
  check_error(http(port, "POST", "/v1/completions", std::string(100000, 'x')), 413, "--max-body-bytes");

  check_error(http(port, "GET", "/v1/nothing", "", false), 404, "no such path");
  check_error(http(port, "POST", "/v2/embeddings", "{}"), 404, "no such path");
  const HttpReply m1 = http(port, "GET", "/v1/completions", "", false);
  check_error(m1, 405, "use POST");
  CHECK(contains(m1.headers, "Allow: POST"));
  check_error(http(port, "POST", "/health", "{}"), 405, "use GET");
  check_error(http(port, "DELETE", "/v1/embeddings", "", false), 405, "use POST");

  // Still alive and answering, and it counted the failures.
  const HttpReply h = http(port, "GET", "/health", "", false);
  REQUIRE_MESSAGE(h.status == 200, h.body);
  CHECK(h.j()["requests"]["failed"].get<int>() >= 35);
  const HttpReply ok = http(port, "POST", "/v1/completions", R"({"prompt": "to", "max_tokens": 8, "temperature": 0})");
  REQUIRE_MESSAGE(ok.status == 200, ok.body);
  CHECK(ok.j()["choices"][0]["text"].get<std::string>().size() == 8);
  CHECK(server.stop() == 0);
}

#else

TEST_CASE("server: skipped (xfrun_server was not built: no cpp-httplib; or no CLI)" * doctest::skip()) {}

#endif
