// GPT-2 the plain way, in float64, from a Hugging Face directory
// (config.json + model.safetensors, Conv1D weights (in, out)): the oracle
// that tandem's GPT-2 (models/gpt2) and `tandem eval` are checked against.
// It shares no code with the model: only the file format.
#pragma once

#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/core/error.h"
#include "runtime/safetensors.h"

namespace tandem::testing {

struct Gpt2Reference {
  int64_t V = 0, P = 0, L = 0, NH = 0, C = 0;
  double eps = 1e-5;
  std::map<std::string, std::vector<double>> w;  // file names without "transformer.", file layouts

  explicit Gpt2Reference(const std::string& dir) {
    std::ifstream in(dir + "/config.json");
    nlohmann::json j = nlohmann::json::parse(in);
    V = j["vocab_size"];
    P = j["n_positions"];
    L = j["n_layer"];
    NH = j["n_head"];
    C = j["n_embd"];
    eps = j.value("layer_norm_epsilon", 1e-5);
    for (auto& [name, t] : read_safetensors(dir + "/model.safetensors").tensors) {
      std::string key = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
      TANDEM_CHECK(t.dtype() == DType::f32, "reference reads f32 weights");
      const float* p = t.data_as<float>();
      w[key].assign(p, p + t.numel());
    }
  }

  const std::vector<double>& at(const std::string& name) const {
    auto it = w.find(name);
    TANDEM_CHECK(it != w.end(), "reference: no tensor " + name);
    return it->second;
  }

  // x (N, C) -> layernorm(x) * g + b.
  std::vector<double> layernorm(const std::vector<double>& x, const std::string& prefix) const {
    const auto &g = at(prefix + ".weight"), &b = at(prefix + ".bias");
    std::vector<double> y(x.size());
    for (size_t r = 0; r < x.size() / C; r++) {
      double mean = 0, var = 0;
      for (int64_t c = 0; c < C; c++) mean += x[r * C + c] / C;
      for (int64_t c = 0; c < C; c++) var += (x[r * C + c] - mean) * (x[r * C + c] - mean) / C;
      for (int64_t c = 0; c < C; c++) y[r * C + c] = (x[r * C + c] - mean) / std::sqrt(var + eps) * g[c] + b[c];
    }
    return y;
  }

  // x (N, in) @ W (in, out) + bias: Hugging Face's Conv1D.
  std::vector<double> conv1d(const std::vector<double>& x, const std::string& prefix, int64_t in, int64_t out) const {
    const auto &W = at(prefix + ".weight"), &b = at(prefix + ".bias");
    size_t N = x.size() / in;
    std::vector<double> y(N * out);
    for (size_t n = 0; n < N; n++)
      for (int64_t o = 0; o < out; o++) {
        double s = b[o];
        for (int64_t i = 0; i < in; i++) s += x[n * in + i] * W[i * out + o];
        y[n * out + o] = s;
      }
    return y;
  }

  // Causal self-attention of one sequence: qkv (T, 3C) -> (T, C).
  std::vector<double> attention(const std::vector<double>& qkv, int64_t T) const {
    int64_t HS = C / NH;
    std::vector<double> y(T * C, 0.0);
    for (int64_t h = 0; h < NH; h++)
      for (int64_t i = 0; i < T; i++) {
        std::vector<double> s(i + 1);
        double top = -1e300, total = 0;
        for (int64_t j = 0; j <= i; j++) {
          double dot = 0;
          for (int64_t d = 0; d < HS; d++) dot += qkv[i * 3 * C + h * HS + d] * qkv[j * 3 * C + C + h * HS + d];
          s[j] = dot / std::sqrt(static_cast<double>(HS));
          top = std::max(top, s[j]);
        }
        for (int64_t j = 0; j <= i; j++) total += s[j] = std::exp(s[j] - top);
        for (int64_t j = 0; j <= i; j++)
          for (int64_t d = 0; d < HS; d++) y[i * C + h * HS + d] += s[j] / total * qkv[j * 3 * C + 2 * C + h * HS + d];
      }
    return y;
  }

  // Logits (T, V) of one sequence.
  std::vector<double> logits(const int32_t* tokens, int64_t T) const {
    const auto &wte = at("wte.weight"), &wpe = at("wpe.weight");
    std::vector<double> x(T * C);
    for (int64_t t = 0; t < T; t++)
      for (int64_t c = 0; c < C; c++) x[t * C + c] = wte[tokens[t] * C + c] + wpe[t * C + c];
    for (int64_t l = 0; l < L; l++) {
      std::string h = "h." + std::to_string(l) + ".";
      std::vector<double> a = conv1d(attention(conv1d(layernorm(x, h + "ln_1"), h + "attn.c_attn", C, 3 * C), T),
                                     h + "attn.c_proj", C, C);
      for (size_t i = 0; i < x.size(); i++) x[i] += a[i];
      std::vector<double> f = conv1d(layernorm(x, h + "ln_2"), h + "mlp.c_fc", C, 4 * C);
      for (double& v : f) v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
      std::vector<double> m = conv1d(f, h + "mlp.c_proj", 4 * C, C);
      for (size_t i = 0; i < x.size(); i++) x[i] += m[i];
    }
    x = layernorm(x, "ln_f");
    std::vector<double> out(T * V);
    for (int64_t t = 0; t < T; t++)
      for (int64_t v = 0; v < V; v++) {
        double s = 0;
        for (int64_t c = 0; c < C; c++) s += x[t * C + c] * wte[v * C + c];
        out[t * V + v] = s;
      }
    return out;
  }

  // Mean next-token cross-entropy over B sequences of T: inputs and targets (B*T).
  double loss(const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets, int64_t B, int64_t T) const {
    double total = 0;
    for (int64_t b = 0; b < B; b++) {
      std::vector<double> lg = logits(inputs.data() + b * T, T);
      for (int64_t t = 0; t < T; t++) {
        const double* row = lg.data() + t * V;
        double top = *std::max_element(row, row + V), sum = 0;
        for (int64_t v = 0; v < V; v++) sum += std::exp(row[v] - top);
        total += top + std::log(sum) - row[targets[b * T + t]];
      }
    }
    return total / static_cast<double>(B * T);
  }

  // Mean loss over `batches` batches of a token stream in llm.c's
  // convention: batch i reads B*T+1 tokens from offset i*B*T.
  double stream_loss(const std::vector<int32_t>& tokens, int64_t B, int64_t T, int64_t batches) const {
    double sum = 0;
    for (int64_t i = 0; i < batches; i++) {
      auto first = tokens.begin() + i * B * T;
      sum += loss({first, first + B * T}, {first + 1, first + B * T + 1}, B, T);
    }
    return sum / static_cast<double>(batches);
  }
};

}  // namespace tandem::testing
