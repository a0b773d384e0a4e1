#include "runtime/config.h"

#include <fmt/format.h>

#include <sstream>

#include "runtime/core/error.h"

namespace tandem {

namespace {

const std::vector<std::string> kTopLevelKeys = {
    "model", "data", "data_dir", "device", "dtype", "seed", "batch_size", "epochs", "max_steps", "optimizer",
    "lr", "lr_schedule", "min_lr_ratio", "warmup_steps", "weight_decay", "momentum", "nesterov", "beta1",
    "beta2", "eps", "grad_clip", "grad_accum_steps", "backend", "bucket_cap_mb", "grad_compression", "comm_timeout", "log_every",
    "eval_every", "ckpt_every", "train_data", "val_data", "seq_len", "val_batches", "init_from",
    "random_crop_padding", "random_hflip"};

std::string where_key(const TrainConfig& c, const std::string& key) { return fmt::format("'{}' in {}", key, c.source); }

void read(const toml::table& t, const char* key, std::string& out, const TrainConfig& c) {
  if (const toml::node* n = t.get(key)) {
    if (!n->is_string()) throw UserError(fmt::format("{} must be a string", where_key(c, key)));
    out = n->value<std::string>().value();
  }
}

void read(const toml::table& t, const char* key, int64_t& out, const TrainConfig& c, int64_t min_value) {
  if (const toml::node* n = t.get(key)) {
    if (!n->is_integer()) throw UserError(fmt::format("{} must be an integer", where_key(c, key)));
    out = n->value<int64_t>().value();
  }
  if (out < min_value) throw UserError(fmt::format("{} must be >= {}, got {}", where_key(c, key), min_value, out));
}

void read(const toml::table& t, const char* key, double& out, const TrainConfig& c, double min_value) {
  if (const toml::node* n = t.get(key)) {
    if (!n->is_number()) throw UserError(fmt::format("{} must be a number", where_key(c, key)));
    out = n->value<double>().value();
  }
  if (!(out >= min_value)) throw UserError(fmt::format("{} must be >= {}, got {}", where_key(c, key), min_value, out));
}

void read(const toml::table& t, const char* key, bool& out, const TrainConfig& c) {
  if (const toml::node* n = t.get(key)) {
    if (!n->is_boolean()) throw UserError(fmt::format("{} must be true or false", where_key(c, key)));
    out = n->value<bool>().value();
  }
}

void one_of(const std::string& value, std::initializer_list<const char*> allowed, const TrainConfig& c,
            const char* key) {
  for (const char* a : allowed)
    if (value == a) return;
  std::string list;
  for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
  throw UserError(fmt::format("{} is '{}'; expected one of {}", where_key(c, key), value, list));
}

}  // namespace

void check_keys(const toml::table& table, const std::vector<std::string>& allowed, const std::string& where) {
  for (auto&& [key, value] : table) {
    bool known = false;
    for (const std::string& a : allowed) known = known || a == key.str();
    if (!known) throw UserError(fmt::format("unknown config key '{}' in {}", key.str(), where));
  }
}

float read_dropout(const toml::table& table, const std::string& model, const std::string& where, float fallback) {
  const toml::node* n = table.get("dropout");
  if (!n) return fallback;
  if (!n->is_number()) throw UserError(fmt::format("{}.dropout in {} must be a number", model, where));
  float p = static_cast<float>(n->value<double>().value());
  if (!(p >= 0.f && p < 1.f)) throw UserError(fmt::format("{}.dropout in {} must be in [0, 1), got {}", model, where, p));
  return p;
}

int64_t read_positive_int(const toml::table& table, const std::string& model, const char* key,
                          const std::string& where, int64_t fallback) {
  const toml::node* n = table.get(key);
  if (!n) return fallback;
  if (!n->is_integer() || n->value<int64_t>().value() <= 0)
    throw UserError(fmt::format("{}.{} in {} must be a positive integer", model, key, where));
  return n->value<int64_t>().value();
}

std::vector<int64_t> read_positive_list(const toml::table& table, const std::string& model, const char* key,
                                        const std::string& where, bool allow_empty, const char* form,
                                        std::vector<int64_t> fallback) {
  const toml::node* n = table.get(key);
  if (!n) return fallback;
  const toml::array* a = n->as_array();
  if (!a || (a->empty() && !allow_empty)) throw UserError(fmt::format("{}.{} in {} must be {}", model, key, where, form));
  std::vector<int64_t> out;
  for (const toml::node& v : *a) {
    if (!v.is_integer() || v.value<int64_t>().value() <= 0)
      throw UserError(fmt::format("{}.{} in {} must hold positive integers", model, key, where));
    out.push_back(v.value<int64_t>().value());
  }
  return out;
}

void apply_override(toml::table& table, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw UserError(fmt::format("--set expects key=value, got '{}'", assignment));
  std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);

  toml::table* target = &table;
  std::string key = path;
  for (size_t dot; (dot = key.find('.')) != std::string::npos; key = key.substr(dot + 1)) {
    std::string part = key.substr(0, dot);
    if (!target->contains(part)) target->insert(part, toml::table{});
    target = target->get_as<toml::table>(part);
    if (!target) throw UserError(fmt::format("--set {}: '{}' is not a table", path, part));
  }
  try {
    toml::table parsed = toml::parse("v = " + text);
    target->insert_or_assign(key, *parsed.get("v"));
  } catch (const toml::parse_error&) {
    target->insert_or_assign(key, text);  // not a TOML value: a bare string
  }
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  TrainConfig c;
  c.source = path;
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw UserError(fmt::format("cannot read config {}: {} (line {}, column {})", path, e.description(),
                                where.line, where.column));
  }
  for (const std::string& o : overrides) apply_override(table, o);

  read(table, "model", c.model, c);
  if (c.model.empty()) throw UserError(fmt::format("config {} names no model (model = \"mlp\")", path));
  std::vector<std::string> allowed = kTopLevelKeys;
  allowed.push_back(c.model);  // the model's own [section]
  check_keys(table, allowed, path);
  if (const toml::node* section = table.get(c.model)) {
    if (!section->is_table()) throw UserError(fmt::format("'{}' in {} must be a table", c.model, path));
    c.model_options = *section->as_table();
  }

  read(table, "data", c.data, c);
  read(table, "data_dir", c.data_dir, c);
  read(table, "device", c.device, c);
  read(table, "dtype", c.dtype, c);
  one_of(c.dtype, {"f32", "bf16"}, c, "dtype");
  read(table, "seed", c.seed, c, 0);
  read(table, "batch_size", c.batch_size, c, 1);
  read(table, "epochs", c.epochs, c, 0);
  read(table, "max_steps", c.max_steps, c, 0);
  if (c.epochs == 0 && c.max_steps == 0) throw UserError(fmt::format("{}: set epochs or max_steps", path));
  read(table, "optimizer", c.optimizer, c);
  one_of(c.optimizer, {"adamw", "sgd"}, c, "optimizer");
  read(table, "lr", c.lr, c, 0.0);
  read(table, "lr_schedule", c.lr_schedule, c);
  one_of(c.lr_schedule, {"cosine", "constant"}, c, "lr_schedule");
  read(table, "min_lr_ratio", c.min_lr_ratio, c, 0.0);
  read(table, "warmup_steps", c.warmup_steps, c, 0);
  read(table, "weight_decay", c.weight_decay, c, 0.0);
  read(table, "momentum", c.momentum, c, 0.0);
  read(table, "nesterov", c.nesterov, c);
  read(table, "beta1", c.beta1, c, 0.0);
  read(table, "beta2", c.beta2, c, 0.0);
  read(table, "eps", c.eps, c, 0.0);
  if (c.beta1 >= 1.0 || c.beta2 >= 1.0) throw UserError(fmt::format("{}: beta1 and beta2 must be < 1", path));
  read(table, "grad_clip", c.grad_clip, c, 0.0);
  read(table, "grad_accum_steps", c.grad_accum_steps, c, 1);
  read(table, "backend", c.backend, c);
  if (!c.backend.empty()) one_of(c.backend, {"gloo", "nccl"}, c, "backend");
  read(table, "bucket_cap_mb", c.bucket_cap_mb, c, 0.0);
  read(table, "grad_compression", c.grad_compression, c);
  one_of(c.grad_compression, {"none", "bf16", "f16"}, c, "grad_compression");
  read(table, "comm_timeout", c.comm_timeout, c, 0.001);
  read(table, "log_every", c.log_every, c, 1);
  read(table, "eval_every", c.eval_every, c, 0);
  read(table, "ckpt_every", c.ckpt_every, c, 0);
  read(table, "train_data", c.train_data, c);
  read(table, "val_data", c.val_data, c);
  read(table, "seq_len", c.seq_len, c, 1);
  read(table, "val_batches", c.val_batches, c, 0);
  read(table, "init_from", c.init_from, c);
  read(table, "random_crop_padding", c.random_crop_padding, c, 0);
  read(table, "random_hflip", c.random_hflip, c);
  if ((c.random_crop_padding > 0 || c.random_hflip) && c.data != "fashion-mnist")
    throw UserError(fmt::format("{}: random_crop_padding and random_hflip augment images; data '{}' is not images",
                                path, c.data));
  return c;
}

std::string to_toml(const TrainConfig& c) {
  toml::table t{{"model", c.model},       {"data", c.data},
                {"data_dir", c.data_dir}, {"device", c.device},
                {"dtype", c.dtype},       {"seed", c.seed},
                {"batch_size", c.batch_size}, {"epochs", c.epochs},
                {"max_steps", c.max_steps},   {"optimizer", c.optimizer},
                {"lr", c.lr},             {"lr_schedule", c.lr_schedule},
                {"min_lr_ratio", c.min_lr_ratio}, {"warmup_steps", c.warmup_steps},
                {"weight_decay", c.weight_decay}, {"momentum", c.momentum},
                {"nesterov", c.nesterov}, {"beta1", c.beta1},
                {"beta2", c.beta2},       {"eps", c.eps},
                {"grad_clip", c.grad_clip}, {"grad_accum_steps", c.grad_accum_steps},
                {"backend", c.backend}, {"bucket_cap_mb", c.bucket_cap_mb},
                {"grad_compression", c.grad_compression},
                {"comm_timeout", c.comm_timeout}, {"log_every", c.log_every},
                {"eval_every", c.eval_every}, {"ckpt_every", c.ckpt_every},
                {"train_data", c.train_data}, {"val_data", c.val_data},
                {"seq_len", c.seq_len}, {"val_batches", c.val_batches},
                {"init_from", c.init_from}, {"random_crop_padding", c.random_crop_padding},
                {"random_hflip", c.random_hflip}};
  t.insert(c.model, c.model_options);
  std::ostringstream out;
  out << t;
  return out.str();
}

}  // namespace tandem
