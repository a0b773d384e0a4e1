// `tandem bench model`: the throughput of whole training steps, the number
// to hold against PyTorch (bench/pytorch/gpt2.py measures the same GPT-2
// step). Each step is what `tandem train` does with AdamW and no clipping:
// zero the gradients, forward, cross-entropy forward and backward, model
// backward, one fused AdamW update over the flat parameter buffer.
//
// Models: gpt2-124m, gpt2-350m, gpt2-tiny (tokens), lstm (the character LSTM
// of models/lstm/fortunes.toml, tokens), cnn and resnet (the Fashion-MNIST
// classifiers of models/cnn/fashion.toml and resnet.toml, 28x28 images).
// Inputs are random (Philox): tokens uniform over the vocabulary, pixels
// uniform in [-1, 1), labels uniform over 10 classes. The weights start from
// the model's init, so the loss starts at about ln(vocab or classes); the
// same batch is used every step, so it falls as that batch is learned.
//
// Reported: mean step time over `steps` timed steps after `warmup` ones (the
// stream is synchronized only around the timed loop; inside it a step syncs
// only where the step itself does), tokens/s or images/s, and the model
// FLOP/s: GPT-2's 6N + 12 L C T per token (nanoGPT's accounting); for the
// others 3 x the forward's GEMM and convolution FLOPs (backward costs twice
// the forward). On a GPU also the MFU: that rate over the device's dense
// bf16 peak, the datasheet figure when the device name is known, else the
// rate of a large bf16 matmul measured here (as `bench kernels` measures its
// peak); the report says which. The MFU is against the bf16 peak whatever
// --dtype is.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "models/cnn/cnn.h"
#include "models/cnn/resnet.h"
#include "models/gpt2/gpt2.h"
#include "models/lstm/lstm.h"

namespace tandem::bench {

struct ModelBenchOptions {
  std::string model = "gpt2-124m";  // gpt2-124m, gpt2-350m, gpt2-tiny, lstm, cnn or resnet
  std::string device = "auto";      // cpu, cuda, cuda:N or auto
  std::string dtype;                // f32 or bf16; empty: bf16 on a GPU (f32 for lstm), f32 on the CPU
  int64_t batch_size = 0;           // 0: the model's default for the device (see default_batch)
  int64_t seq_len = 0;              // token models; 0: the model's default for the device
  int steps = 20;                   // timed steps
  int warmup = 5;                   // untimed steps first
};

struct ModelBenchReport {
  std::string model, device, device_name, dtype;
  std::string unit;           // "tokens" or "images"
  std::string architecture;   // one line: the sizes
  nlohmann::json config;      // the sizes, as the model's config names them
  int64_t parameters = 0, batch_size = 0;
  int64_t seq_len = 0;        // token models; 0 for images
  int steps = 0, warmup = 0;
  double step_ms = 0;         // mean over the timed steps
  double units_per_s = 0;     // tokens/s or images/s
  double flops_per_unit = 0;  // training FLOPs per token or image
  double model_tflops = 0;
  // GPU only (0 and empty on the CPU): the dense bf16 peak and where it came
  // from ("datasheet" or "measured"), and model_tflops / peak_tflops.
  double peak_tflops = 0;
  std::string peak_source;
  double mfu = 0;
  double loss = 0;          // mean cross-entropy of the last timed step
  double initial_loss = 0;  // ln(number of classes): what a fresh model scores
};

// The named sizes: gpt2-124m (GPT-2 small), gpt2-350m (GPT-2 medium) and
// gpt2-tiny (models/gpt2/tiny.toml's [gpt2]). UserError for any other name.
models::Gpt2Config gpt2_preset(const std::string& name);
// The benchmarked sizes of the other models: models/lstm/fortunes.toml's
// [lstm], models/cnn/fashion.toml's [cnn], models/cnn/resnet.toml's [resnet].
models::CharLstmOptions lstm_preset();
models::CnnOptions cnn_preset();
models::ResNetOptions resnet_preset();

// The dense bf16 tensor-core TFLOP/s of NVIDIA's datasheet for a device
// named `device_name` (cudaDeviceProp::name), or 0 when it is not known.
double datasheet_bf16_tflops(const std::string& device_name);

// Checks the options (UserError with the reason), fills the defaults, builds
// the model on the device and runs the steps.
ModelBenchReport run_model_bench(const ModelBenchOptions& options);

void print_model_report(const ModelBenchReport& report);
nlohmann::json model_json(const ModelBenchReport& report);

// The CLI entry: runs, prints, writes `json_out` when given.
void run_model_command(const ModelBenchOptions& options, const std::string& json_out);

}  // namespace tandem::bench
