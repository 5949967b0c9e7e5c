#include "factory/sweep_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "factory/sweep_runner.h"
#include "runtime/error.h"
#include "runtime/file_io.h"

namespace xfr {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string fmt(double v, const char* f = "%.4g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string opt_text(const std::optional<double>& v, const char* f = "%.4g") { return v ? fmt(*v, f) : "-"; }

std::string value_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt(v.get<double>(), "%.6g");
  return v.dump();
}

std::optional<double> number(const json& j, const std::string& key) {
  if (j.contains(key) && j[key].is_number()) return j[key].get<double>();
  return std::nullopt;
}

std::optional<json> read_json_file(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return std::nullopt;
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

// metrics.jsonl records by step (a resumed trial may repeat steps: the later record wins, fields merged).
std::map<int64_t, json> read_metrics(const fs::path& p) {
  std::map<int64_t, json> by_step;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json r;
    try {
      r = json::parse(line);
    } catch (const json::exception&) {
      continue;  // a torn last line of a killed trial
    }
    if (!r.is_object() || !r.contains("step") || !r["step"].is_number_integer()) continue;
    json& slot = by_step[r["step"].get<int64_t>()];
    if (slot.is_null()) slot = json::object();
    slot.update(r);
  }
  return by_step;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string color(size_t i) { return "hsl(" + std::to_string(static_cast<int>(std::fmod(i * 137.508, 360.0))) + ",65%,45%)"; }

// A plot frame: maps data to pixels, draws axes with a few ticks.
struct Plot {
  double W = 640, H = 340, L = 64, R = 16, T = 28, B = 44;
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  bool logx = false;
  double px(double x) const {
    const double a = logx ? std::log10(x) : x, lo = logx ? std::log10(x0) : x0, hi = logx ? std::log10(x1) : x1;
    return L + (hi > lo ? (a - lo) / (hi - lo) : 0.5) * (W - L - R);
  }
  double py(double y) const { return T + (y1 > y0 ? (y1 - y) / (y1 - y0) : 0.5) * (H - T - B); }
  std::string frame(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                    const std::vector<std::string>& categories = {}) const {
    std::ostringstream s;
    s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
      << " " << H << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
    s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    s << "<text x=\"" << W / 2 << "\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">" << html_escape(title) << "</text>\n";
    s << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
    s << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
    for (int k = 0; k <= 4; ++k) {
      const double y = y0 + (y1 - y0) * k / 4.0;
      s << "<text x=\"" << L - 4 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << fmt(y) << "</text>\n";
      s << "<line x1=\"" << L << "\" y1=\"" << py(y) << "\" x2=\"" << W - R << "\" y2=\"" << py(y)
        << "\" stroke=\"#ddd\"/>\n";
    }
    if (categories.empty()) {
      for (int k = 0; k <= 4; ++k) {
        const double x = logx ? std::pow(10.0, std::log10(x0) + (std::log10(x1) - std::log10(x0)) * k / 4.0)
                              : x0 + (x1 - x0) * k / 4.0;
        s << "<text x=\"" << px(x) << "\" y=\"" << H - B + 14 << "\" text-anchor=\"middle\">" << fmt(x) << "</text>\n";
      }
    } else {
      for (size_t k = 0; k < categories.size(); ++k)
        s << "<text x=\"" << px(static_cast<double>(k)) << "\" y=\"" << H - B + 14 << "\" text-anchor=\"middle\">"
          << html_escape(categories[k]) << "</text>\n";
    }
    s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 8 << "\" text-anchor=\"middle\">" << html_escape(xlabel)
      << (logx ? " (log scale)" : "") << "</text>\n";
    s << "<text x=\"14\" y=\"" << (T + H - B) / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 14 "
      << (T + H - B) / 2 << ")\">" << html_escape(ylabel) << "</text>\n";
    return s.str();
  }
};

void pad(double& lo, double& hi) {
  if (!(hi > lo)) {
    const double d = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= d;
    hi += d;
    return;
  }
  const double d = (hi - lo) * 0.05;
  lo -= d;
  hi += d;
}

}  // namespace

SweepReport gather_sweep_report(const std::string& dir_in) {
  const fs::path dir = fs::absolute(dir_in).lexically_normal();
  const json st = read_sweep_status(dir.string());
  SweepReport rep;
  rep.dir = dir.string();
  rep.template_path = st.value("template", "");
  rep.method = st.value("method", "");
  rep.metric = st.contains("metric") ? st["metric"].value("name", "val_loss") : "val_loss";
  rep.goal = st.contains("metric") ? st["metric"].value("goal", "minimize") : "minimize";
  if (st.contains("parameters"))
    for (const auto& p : st["parameters"]) rep.parameters.push_back(p.get<std::string>());
  const bool maximize = rep.goal == "maximize";
  for (const auto& t : st.at("trials")) {
    SweepTrialResult r;
    r.index = t.at("index").get<size_t>();
    r.status = t.value("status", "pending");
    r.params = t.value("overrides", json::object());
    const fs::path tdir = dir / t.value("dir", "trial_" + std::to_string(r.index));
    r.dir = tdir.string();
    if (t.contains("exit_code") && t["exit_code"].is_number_integer()) r.exit_code = t["exit_code"].get<int>();
    r.wall_s = number(t, "wall_s");
    // A result.json (written when the trial process ended, by the local launcher or the SLURM task) is
    // the final word for trials the status file does not know as finished.
    if (r.status != "done" && r.status != "failed") {
      if (auto res = read_json_file(tdir / "result.json"); res && res->contains("exit_code")) {
        r.exit_code = (*res)["exit_code"].get<int>();
        r.status = *r.exit_code == 0 ? "done" : "failed";
        r.wall_s = number(*res, "wall_s");
      }
    }
    const auto metrics = read_metrics(tdir / "metrics.jsonl");
    std::vector<double> tps;
    for (const auto& [step, rec] : metrics) {
      r.steps = std::max(r.steps, step);
      if (auto l = number(rec, "loss")) {
        r.loss_curve.emplace_back(step, *l);
        r.final_loss = *l;
      }
      if (auto m = number(rec, rep.metric)) {
        r.metric_curve.emplace_back(step, *m);
        if (!r.best_metric || (maximize ? *m > *r.best_metric : *m < *r.best_metric)) r.best_metric = *m;
      }
      if (auto v = number(rec, "tokens_per_s")) tps.push_back(*v);
    }
    if (!tps.empty()) {
      std::sort(tps.begin(), tps.end());
      r.tokens_per_s = tps[tps.size() / 2];
    }
    rep.trials.push_back(std::move(r));
  }
  std::stable_sort(rep.trials.begin(), rep.trials.end(), [&](const SweepTrialResult& a, const SweepTrialResult& b) {
    if (a.best_metric.has_value() != b.best_metric.has_value()) return a.best_metric.has_value();
    if (!a.best_metric) return a.index < b.index;
    if (*a.best_metric != *b.best_metric) return maximize ? *a.best_metric > *b.best_metric : *a.best_metric < *b.best_metric;
    return a.index < b.index;
  });
  for (auto& t : rep.trials)
    if (t.best_metric && t.status == "done") {
      t.best = true;
      break;
    }
  return rep;
}

namespace {

// The shortest dotted suffixes that still tell the parameters apart (num_heads for
// model.stack_configs.0.multi_head_config.num_heads), for the printed table.
std::vector<std::string> short_names(const std::vector<std::string>& keys) {
  auto suffix = [](const std::string& k, int parts) {
    size_t at = k.size();
    for (int i = 0; i < parts; ++i) {
      const size_t dot = at == 0 ? std::string::npos : k.rfind('.', at - 1);
      if (dot == std::string::npos) return k;
      at = dot;
    }
    return k.substr(at + 1);
  };
  for (int parts = 1; parts < 64; ++parts) {
    std::vector<std::string> names;
    for (const auto& k : keys) names.push_back(suffix(k, parts));
    std::vector<std::string> sorted = names;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()) return names;
  }
  return keys;
}

std::vector<std::string> header(const SweepReport& rep, bool short_params = false) {
  std::vector<std::string> h = {"best", "trial", "status"};
  for (const auto& p : short_params ? short_names(rep.parameters) : rep.parameters) h.push_back(p);
  for (const char* c : {"steps", "final_loss"}) h.push_back(c);
  h.push_back((rep.goal == "maximize" ? "max_" : "min_") + rep.metric);
  for (const char* c : {"tokens_per_s", "wall_s", "dir"}) h.push_back(c);
  return h;
}

std::vector<std::string> row(const SweepReport& rep, const SweepTrialResult& t) {
  std::vector<std::string> r = {t.best ? "*" : "", std::to_string(t.index),
                                t.status + (t.status == "failed" && t.exit_code ? " (" + std::to_string(*t.exit_code) + ")" : "")};
  for (const auto& p : rep.parameters) r.push_back(t.params.contains(p) ? value_text(t.params[p]) : "-");
  r.push_back(std::to_string(t.steps));
  r.push_back(opt_text(t.final_loss));
  r.push_back(opt_text(t.best_metric));
  r.push_back(opt_text(t.tokens_per_s, "%.0f"));
  r.push_back(opt_text(t.wall_s, "%.1f"));
  r.push_back(t.dir);
  return r;
}

}  // namespace

std::string sweep_report_table(const SweepReport& rep) {
  std::vector<std::vector<std::string>> rows = {header(rep, true)};
  for (const auto& t : rep.trials) rows.push_back(row(rep, t));
  rows[0][0] = "";
  std::vector<size_t> w(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], r[i].size());
  std::string s = str_cat("sweep ", rep.dir, " (", rep.method, ", ", rep.trials.size(), " trials, metric ", rep.metric,
                          ", ", rep.goal, ")\n");
  const auto shorts = short_names(rep.parameters);
  for (size_t i = 0; i < shorts.size(); ++i)
    if (shorts[i] != rep.parameters[i]) s += "  " + shorts[i] + " = " + rep.parameters[i] + "\n";
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(w[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    s += line + "\n";
  }
  size_t n_done = 0, n_failed = 0;
  for (const auto& t : rep.trials) {
    n_done += t.status == "done";
    n_failed += t.status == "failed";
  }
  s += str_cat(n_done, " done, ", n_failed, " failed, ", rep.trials.size() - n_done - n_failed, " not finished\n");
  return s;
}

std::string sweep_report_csv(const SweepReport& rep) {
  std::string s;
  auto line = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size(); ++i) s += (i ? "," : "") + csv_field(r[i]);
    s += "\n";
  };
  line(header(rep));
  for (const auto& t : rep.trials) {
    auto r = row(rep, t);
    r[0] = t.best ? "1" : "0";
    r[2] = t.status;
    for (auto& f : r)
      if (f == "-") f.clear();
    line(r);
  }
  return s;
}

std::string sweep_report_jsonl(const SweepReport& rep) {
  std::string s;
  auto opt = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  for (const auto& t : rep.trials) {
    json j = {{"trial", t.index}, {"status", t.status}, {"best", t.best},
              {"exit_code", t.exit_code ? json(*t.exit_code) : json(nullptr)}, {"params", t.params},
              {"steps", t.steps}, {"final_loss", opt(t.final_loss)}, {"metric", rep.metric},
              {"best_metric", opt(t.best_metric)}, {"tokens_per_s", opt(t.tokens_per_s)}, {"wall_s", opt(t.wall_s)},
              {"dir", t.dir}};
    s += j.dump() + "\n";
  }
  return s;
}

std::string sweep_report_html(const SweepReport& rep) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>xfrun sweep " << html_escape(rep.dir)
    << "</title>\n<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse;font-size:13px}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}tr.best{background:#e6ffe6;font-weight:bold}"
       "svg{margin:8px 8px 8px 0;border:1px solid #eee}</style></head><body>\n";
  h << "<h1>Sweep " << html_escape(fs::path(rep.dir).filename().string()) << "</h1>\n<p>" << html_escape(rep.dir)
    << "<br>template: " << html_escape(rep.template_path) << "<br>method: " << html_escape(rep.method)
    << ", metric: " << html_escape(rep.metric) << " (" << html_escape(rep.goal) << ")</p>\n<table>\n<tr>";
  for (const auto& c : header(rep)) h << "<th>" << html_escape(c) << "</th>";
  h << "</tr>\n";
  for (const auto& t : rep.trials) {
    h << "<tr" << (t.best ? " class=\"best\"" : "") << ">";
    for (const auto& c : row(rep, t)) h << "<td>" << html_escape(c) << "</td>";
    h << "</tr>\n";
  }
  h << "</table>\n<h2>Loss curves</h2>\n";

  // Every trial's training loss against the step.
  Plot lp;
  bool any = false;
  double ymin = 0, ymax = 0, xmax = 1;
  for (const auto& t : rep.trials)
    for (const auto& [s, l] : t.loss_curve) {
      if (!std::isfinite(l)) continue;
      if (!any) ymin = ymax = l;
      any = true;
      ymin = std::min(ymin, l);
      ymax = std::max(ymax, l);
      xmax = std::max(xmax, static_cast<double>(s));
    }
  lp.x0 = 0;
  lp.x1 = xmax;
  lp.y0 = ymin;
  lp.y1 = ymax;
  pad(lp.y0, lp.y1);
  lp.R = 120;
  h << lp.frame("training loss", "step", "loss");
  size_t legend = 0;
  for (const auto& t : rep.trials) {
    if (t.loss_curve.empty()) continue;
    std::string pts;
    for (const auto& [s, l] : t.loss_curve)
      if (std::isfinite(l)) pts += fmt(lp.px(static_cast<double>(s)), "%.1f") + "," + fmt(lp.py(l), "%.1f") + " ";
    h << "<polyline fill=\"none\" stroke=\"" << color(t.index) << "\" stroke-width=\"" << (t.best ? 3 : 1.5)
      << "\" points=\"" << pts << "\"><title>trial " << t.index << "</title></polyline>\n";
    if (legend < 20) {
      const double y = lp.T + 12 * static_cast<double>(legend++);
      h << "<rect x=\"" << lp.W - lp.R + 8 << "\" y=\"" << y << "\" width=\"10\" height=\"3\" fill=\"" << color(t.index)
        << "\"/><text x=\"" << lp.W - lp.R + 22 << "\" y=\"" << y + 5 << "\">trial " << t.index << (t.best ? " (best)" : "")
        << "</text>\n";
    }
  }
  h << "</svg>\n<h2>" << html_escape(rep.metric) << " against each swept parameter</h2>\n";

  // The best metric of each trial against each parameter (numeric axes, log when the values span 50x).
  for (const auto& p : rep.parameters) {
    std::vector<std::pair<const SweepTrialResult*, json>> pts;
    for (const auto& t : rep.trials)
      if (t.best_metric && std::isfinite(*t.best_metric) && t.params.contains(p)) pts.emplace_back(&t, t.params[p]);
    Plot pp;
    bool numeric = !pts.empty();
    for (const auto& [t, v] : pts) numeric = numeric && v.is_number();
    std::vector<std::string> cats;
    auto xval = [&](const json& v) -> double {
      if (numeric) return v.get<double>();
      const std::string s = value_text(v);
      auto it = std::find(cats.begin(), cats.end(), s);
      return static_cast<double>(it - cats.begin());
    };
    if (!numeric)
      for (const auto& [t, v] : pts)
        if (std::find(cats.begin(), cats.end(), value_text(v)) == cats.end()) cats.push_back(value_text(v));
    double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    for (size_t i = 0; i < pts.size(); ++i) {
      const double x = xval(pts[i].second), y = *pts[i].first->best_metric;
      if (i == 0) x0 = x1 = x, y0 = y1 = y;
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
    pp.logx = numeric && x0 > 0 && x1 / x0 >= 50;
    if (!numeric) {
      x0 = -0.5;
      x1 = std::max<double>(0.5, static_cast<double>(cats.size()) - 0.5);
    } else if (!pp.logx) {
      pad(x0, x1);
    } else {
      x0 /= 1.3;
      x1 *= 1.3;
    }
    pad(y0, y1);
    pp.x0 = x0;
    pp.x1 = x1;
    pp.y0 = y0;
    pp.y1 = y1;
    h << pp.frame(rep.metric + " vs " + p, p, (rep.goal == "maximize" ? "max " : "min ") + rep.metric, cats);
    for (const auto& [t, v] : pts)
      h << "<circle cx=\"" << fmt(pp.px(xval(v)), "%.1f") << "\" cy=\"" << fmt(pp.py(*t->best_metric), "%.1f")
        << "\" r=\"" << (t->best ? 7 : 5) << "\" fill=\"" << color(t->index) << "\" stroke=\"" << (t->best ? "black" : "none")
        << "\"><title>trial " << t->index << ": " << html_escape(p) << "=" << html_escape(value_text(v)) << ", "
        << html_escape(rep.metric) << "=" << fmt(*t->best_metric) << "</title></circle>\n";
    h << "</svg>\n";
  }
  h << "</body></html>\n";
  return h.str();
}

void write_sweep_report(const SweepReport& rep) {
  const fs::path d = rep.dir;
  write_file_atomic((d / "results.csv").string(), sweep_report_csv(rep));
  write_file_atomic((d / "results.jsonl").string(), sweep_report_jsonl(rep));
  write_file_atomic((d / "report.html").string(), sweep_report_html(rep));
}

}  // namespace xfr
