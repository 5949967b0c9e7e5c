// xfrun_server_load: a closed-loop load test for xfrun_server. N clients, each on its own keep-alive
// connection, send requests back to back for a bounded time (after a warm-up that is not counted) and the
// tool reports throughput, latency percentiles and failures (a transport error or any status but 200).
//
//   xfrun_server_load --port 8080 --endpoint completions --clients 4 --duration 10 --max-tokens 32
//   xfrun_server_load --port 8080 --endpoint embeddings --clients 4 --duration 10 --batch 8 --json
//
// Requests cycle through --text values (default: a few lines of Shakespeare of different lengths);
// completions are sampled (temperature 0.8) with a seed per request. Exit code 0 when every request
// succeeded, 1 otherwise, 2 for a usage error.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>

namespace {

using Clock = std::chrono::steady_clock;

struct ClientStats {
  std::vector<double> latency_ms;  // successful requests in the measured window
  int64_t failed = 0;
  int64_t completion_tokens = 0;
  int64_t prompt_tokens = 0;
  std::string first_error;
};

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "127.0.0.1", endpoint = "completions";
  int port = 8080, clients = 4;
  double duration = 10, warmup = 1;
  int64_t max_tokens = 16, batch = 1;
  double temperature = 0.8;
  bool as_json = false;
  std::vector<std::string> texts;
  CLI::App app{"xfrun_server_load: concurrent clients against xfrun_server for a bounded time"};
  app.add_option("--host", host)->capture_default_str();
  app.add_option("--port", port)->capture_default_str()->check(CLI::Range(1, 65535));
  app.add_option("--endpoint", endpoint, "embeddings or completions")->capture_default_str()->check(CLI::IsMember({"embeddings", "completions"}));
  app.add_option("--clients", clients, "concurrent clients (one connection each)")->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_option("--duration", duration, "measured seconds")->capture_default_str()->check(CLI::Range(0.1, 3600.0));
  app.add_option("--warmup", warmup, "seconds of requests before measuring (not counted)")->capture_default_str()->check(CLI::Range(0.0, 600.0));
  app.add_option("--max-tokens", max_tokens, "completions: max_tokens per request")->capture_default_str();
  app.add_option("--temperature", temperature, "completions: sampling temperature")->capture_default_str();
  app.add_option("--batch", batch, "embeddings: inputs per request")->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{4096}));
  app.add_option("--text", texts, "request texts, used in turn (repeatable)");
  app.add_flag("--json", as_json, "print one JSON object instead of text");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (texts.empty())
    texts = {"ROMEO:\n",
             "First Citizen:\nBefore we proceed any further, hear me speak.\n",
             "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n",
             "KING RICHARD II:\nNo matter where; of comfort no man speak:\nLet's talk of graves, of worms, and epitaphs;\n"};
  const std::string path = "/v1/" + endpoint;

  // Request bodies, prepared up front so that the clients only send.
  std::vector<std::string> bodies;
  for (size_t i = 0; i < texts.size() * 4; ++i) {
    nlohmann::json b;
    if (endpoint == "embeddings") {
      nlohmann::json input = nlohmann::json::array();
      for (int64_t k = 0; k < batch; ++k) input.push_back(texts[(i + static_cast<size_t>(k)) % texts.size()]);
      b["input"] = batch == 1 ? input[0] : input;
    } else {
      b = {{"prompt", texts[i % texts.size()]}, {"max_tokens", max_tokens}, {"temperature", temperature},
           {"seed", static_cast<int64_t>(i)}};
    }
    bodies.push_back(b.dump());
  }

  const Clock::time_point start = Clock::now();
  const Clock::time_point measure_from = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup));
  const Clock::time_point measure_to = measure_from + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(duration));
  std::vector<ClientStats> stats(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  std::atomic<int64_t> warm_requests{0};
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      ClientStats& s = stats[static_cast<size_t>(c)];
      httplib::Client cli(host, port);
      cli.set_keep_alive(true);
      cli.set_tcp_nodelay(true);
      cli.set_connection_timeout(10);
      cli.set_read_timeout(120);
      cli.set_write_timeout(30);
      for (size_t i = static_cast<size_t>(c);; i += static_cast<size_t>(clients)) {
        const Clock::time_point t0 = Clock::now();
        if (t0 >= measure_to) break;
        const bool measured = t0 >= measure_from;
        auto r = cli.Post(path.c_str(), bodies[i % bodies.size()], "application/json");
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (!measured) {
          warm_requests++;
          if (r && r->status == 200) continue;
        }
        if (!r || r->status != 200) {
          s.failed++;
          if (s.first_error.empty())
            s.first_error = r ? "HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 300)
                              : "transport error: " + httplib::to_string(r.error());
          continue;
        }
        s.latency_ms.push_back(ms);
        const auto j = nlohmann::json::parse(r->body, nullptr, false);
        if (j.is_object() && j.contains("usage") && j["usage"].is_object()) {
          s.prompt_tokens += j["usage"].value("prompt_tokens", int64_t{0});
          s.completion_tokens += j["usage"].value("completion_tokens", int64_t{0});
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  // Requests that start before the window's end and finish after it are counted: the elapsed time runs to
  // the last answer.
  const double elapsed = std::chrono::duration<double>(Clock::now() - std::max(measure_from, start)).count();

  std::vector<double> all;
  int64_t failed = 0, completion_tokens = 0, prompt_tokens = 0;
  std::string first_error;
  for (const auto& s : stats) {
    all.insert(all.end(), s.latency_ms.begin(), s.latency_ms.end());
    failed += s.failed;
    completion_tokens += s.completion_tokens;
    prompt_tokens += s.prompt_tokens;
    if (first_error.empty()) first_error = s.first_error;
  }
  std::sort(all.begin(), all.end());
  double mean = 0;
  for (double v : all) mean += v;
  if (!all.empty()) mean /= static_cast<double>(all.size());
  const auto ok = static_cast<int64_t>(all.size());
  const double rps = static_cast<double>(ok) / elapsed;
  if (as_json) {
    nlohmann::json j = {{"endpoint", path},
                        {"clients", clients},
                        {"duration_s", elapsed},
                        {"requests", ok + failed},
                        {"ok", ok},
                        {"failed", failed},
                        {"req_per_s", rps},
                        {"latency_ms", {{"p50", percentile(all, 50)}, {"p90", percentile(all, 90)}, {"p99", percentile(all, 99)},
                                        {"mean", mean}, {"max", all.empty() ? 0.0 : all.back()}}},
                        {"prompt_tokens_per_s", static_cast<double>(prompt_tokens) / elapsed},
                        {"completion_tokens_per_s", static_cast<double>(completion_tokens) / elapsed}};
    if (!first_error.empty()) j["first_error"] = first_error;
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("%s: %d clients, %.1f s measured (%.1f s warm-up): %lld requests, %lld failed\n", path.c_str(), clients,
                elapsed, warmup, static_cast<long long>(ok + failed), static_cast<long long>(failed));
    std::printf("  %.1f req/s; latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, mean %.2f ms, max %.2f ms\n", rps,
                percentile(all, 50), percentile(all, 90), percentile(all, 99), mean, all.empty() ? 0.0 : all.back());
    if (endpoint == "completions")
      std::printf("  %.0f generated tokens/s, %.0f prompt tokens/s\n", static_cast<double>(completion_tokens) / elapsed,
                  static_cast<double>(prompt_tokens) / elapsed);
    else
      std::printf("  %.0f input tokens/s\n", static_cast<double>(prompt_tokens) / elapsed);
    if (!first_error.empty()) std::printf("  first failure: %s\n", first_error.c_str());
  }
  return failed == 0 && ok > 0 ? 0 : 1;
}
