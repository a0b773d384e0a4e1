// Training configuration: a TOML file plus `--set key=value` overrides.
// Key names are the ones PyTorch and Hugging Face users know. An unknown key
// is an error that names it (never silently ignored); so is a value of the
// wrong type or out of range.
#pragma once

#include <cstdint>
#include <string>
#include <toml++/toml.h>
#include <vector>

namespace tandem {

struct TrainConfig {
  std::string model;                  // "mlp", "gpt2"
  std::string data = "fashion-mnist";
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string device = "cpu";         // "cpu", "cuda", "cuda:N"
  std::string dtype = "f32";          // parameters/activations: "f32" or "bf16" (CUDA)
  int64_t seed = 0;
  int64_t batch_size = 64;            // per rank
  int64_t epochs = 1;
  int64_t max_steps = 0;              // 0: epochs decide
  std::string optimizer = "adamw";    // "adamw" or "sgd"
  double lr = 1e-3;
  std::string lr_schedule = "cosine"; // "cosine" or "constant"
  double min_lr_ratio = 0.0;
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double momentum = 0.9;              // sgd
  bool nesterov = false;              // sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adamw
  double grad_clip = 0.0;             // 0: no clipping
  int64_t grad_accum_steps = 1;       // micro-batches per optimizer step
  std::string backend;                // data parallelism: "gloo", "nccl", or "" (the launcher's choice)
  double bucket_cap_mb = 25.0;        // gradient bucket size for the all-reduce
  std::string grad_compression = "none";  // "none", "bf16" or "f16": gradients on the wire
  double comm_timeout = 300.0;        // seconds a collective may take before it is an error
  int64_t log_every = 50;
  int64_t eval_every = 0;             // steps; 0: at the end of every epoch
  int64_t ckpt_every = 0;             // steps; 0: only at the end
  // Language models (data = "tokens"): llm.c token files, glob patterns.
  std::string train_data;             // e.g. "data/fortunes_train*.bin"
  std::string val_data;               // "": no validation
  int64_t seq_len = 64;               // tokens per sequence (T)
  int64_t val_batches = 20;           // per rank and evaluation; 0: all of val_data
  std::string init_from;              // a Hugging Face GPT-2 directory to start from ("": fresh weights)
  // Image data: torchvision's RandomCrop(padding=p) and RandomHorizontalFlip (runtime/augment.h).
  int64_t random_crop_padding = 0;    // pixels; 0: no crop
  bool random_hflip = false;

  toml::table model_options;          // the [<model>] table, checked by the model
  std::string source;                 // where it came from, for messages
};

// Applies one "a.b=value" override to `table`; the value is read as TOML
// (numbers, booleans, arrays, quoted strings) or else taken as a string.
void apply_override(toml::table& table, const std::string& assignment);

// Reads `path`, applies `overrides` in order and checks every key.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides);

// Checks that `table` holds only `allowed` keys; `where` names it in errors.
void check_keys(const toml::table& table, const std::vector<std::string>& allowed, const std::string& where);

// table["dropout"] (a model's section, `model` names it in errors) as a
// probability in [0, 1); `fallback` when absent.
float read_dropout(const toml::table& table, const std::string& model, const std::string& where, float fallback);

// table[key] of a model's section (`model` names it in errors) as a
// positive integer (a width, a count); `fallback` when absent.
int64_t read_positive_int(const toml::table& table, const std::string& model, const char* key,
                          const std::string& where, int64_t fallback);

// table[key] of a model's section (`model` names it in errors) as a list of
// positive integers (layer widths, channel counts); `fallback` when absent.
// `form` says what is expected in the error for a value that is not an
// array, or is empty when `allow_empty` is false: "an array of widths,
// e.g. [256, 128]".
std::vector<int64_t> read_positive_list(const toml::table& table, const std::string& model, const char* key,
                                        const std::string& where, bool allow_empty, const char* form,
                                        std::vector<int64_t> fallback);

// The resolved configuration as TOML text (logged and stored in checkpoints).
std::string to_toml(const TrainConfig& config);

}  // namespace tandem
