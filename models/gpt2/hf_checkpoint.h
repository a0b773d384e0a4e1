// GPT-2 directories in Hugging Face's layout: config.json (GPT2Config) and
// model.safetensors (GPT2LMHeadModel's state dict). tandem's checkpoints
// are such directories, so transformers loads them with from_pretrained,
// and tandem starts from one (`init_from`, `tandem eval`, `tandem generate`),
// whether tandem or transformers wrote it.
#pragma once

#include <memory>
#include <string>

#include "models/gpt2/gpt2.h"

namespace tandem::models {

// Reads DIR/config.json.
Gpt2Config read_hf_config(const std::string& dir);

// DIR/model.safetensors as `params`' flat fp32 values (CPU). Names may
// carry the "transformer." prefix or not (the Hub's gpt2 files do not); a
// separate lm_head.weight and the attention-mask buffers (attn.bias,
// attn.masked_bias) are ignored, as the head is tied and the mask causal.
// UserError naming the file and the parameter when one is missing or has
// another shape.
Tensor read_hf_weights(const std::string& dir, const ParameterSet& params);

// A GPT-2 built from DIR's config and weights, allocated on `device` in `dtype`.
std::unique_ptr<Gpt2> load_gpt2(const std::string& dir, Device device, DType dtype);

}  // namespace tandem::models
