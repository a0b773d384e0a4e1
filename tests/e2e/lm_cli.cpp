// Language models through the CLI as a user runs them: tokenize text,
// train a small byte-level GPT-2 twice (bitwise-identical checkpoints,
// resumable exactly), `tandem eval` against the float64 GPT-2 computed from
// the checkpoint's own files, `tandem generate`, data parallelism under
// `tandem launch`; and the same commands for the character LSTM.
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/token_file.h"
#include "support/gpt2_reference.h"
#include "support/json_output.h"
#include "support/process.h"
#include "support/python.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

// A scratch directory with token files made by `tandem data tokenize` from
// some English text, and a small config that trains on them in seconds.
struct Workspace {
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_gpt2_e2e_{}", fresh_seed());

  Workspace() {
    fs::create_directories(dir);
    std::ofstream text(dir / "text.txt");
    for (int i = 0; i < 300; i++)
      text << "The quick brown fox jumps over the lazy dog. " << i << " bottles of milk on the wall.\n";
    text.close();
    ShellResult r = run_tandem(fmt::format("data tokenize --input {} --out-prefix {} --val-fraction 0.2",
                                    (dir / "text.txt").string(), (dir / "text").string()));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    std::ofstream(dir / "lstm.toml") << fmt::format(R"(model = "lstm"
data = "tokens"
train_data = "{0}/text_train.bin"
val_data = "{0}/text_val.bin"
seed = 7
batch_size = 4
seq_len = 16
max_steps = 12
lr = 3e-3
log_every = 4
eval_every = 12
val_batches = 4
[lstm]
embedding = 8
hidden = 16
layers = 2
)",
                                                    dir.string());
    std::ofstream(dir / "small.toml") << fmt::format(R"(model = "gpt2"
data = "tokens"
train_data = "{0}/text_train.bin"
val_data = "{0}/text_val.bin"
seed = 7
batch_size = 4
seq_len = 16
max_steps = 12
lr = 3e-3
warmup_steps = 2
grad_clip = 1.0
log_every = 4
eval_every = 6
val_batches = 4
[gpt2]
vocab_size = 256
n_positions = 32
n_layer = 2
n_head = 2
n_embd = 16
)",
                                                     dir.string());
  }
  ~Workspace() { fs::remove_all(dir); }

  std::string config() const { return (dir / "small.toml").string(); }
  ShellResult train(const std::string& extra) const { return run_tandem("train --config " + config() + " " + extra); }
};

}  // namespace

TEST_CASE("tandem train trains GPT-2 on token files; the same seed gives the same checkpoint", "[e2e][gpt2]") {
  Workspace w;
  std::string a = (w.dir / "a").string(), b = (w.dir / "b").string();
  ShellResult first = w.train("--metrics-out " + (w.dir / "m.jsonl").string() + " --ckpt-dir " + a);
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  nlohmann::json summary = last_json(first.output);
  REQUIRE(summary["steps"] == 12);
  REQUIRE(summary["val_loss"].get<double>() < std::log(256.0));  // better than uniform over bytes

  std::ifstream metrics(w.dir / "m.jsonl");
  int losses = 0, evals = 0;
  for (std::string line; std::getline(metrics, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) {
      losses++;
      for (const char* key : {"tokens_per_s", "step_ms", "lr"}) REQUIRE(j.contains(key));
    }
    evals += j.contains("val_loss");
  }
  REQUIRE(losses == 3);
  REQUIRE(evals == 2);

  // Hugging Face's layout: config.json and Conv1D weights as (in, out).
  fs::path step = fs::path(a) / "step_00000012";
  nlohmann::json hf = nlohmann::json::parse(read_bytes(step / "config.json"));
  REQUIRE(hf["model_type"] == "gpt2");
  REQUIRE(hf["n_embd"] == 16);
  SafetensorsFile model = read_safetensors((step / "model.safetensors").string());
  REQUIRE(model.tensors.at("transformer.h.0.attn.c_attn.weight").shape() == Shape{16, 48});
  REQUIRE(model.tensors.at("transformer.h.1.mlp.c_proj.weight").shape() == Shape{64, 16});

  // The same seed: the same checkpoint, every file of it (weights, optimizer
  // state, manifest, config.json) byte for byte.
  ShellResult second = w.train("--ckpt-dir " + b);
  REQUIRE(second.exit_code == 0);
  int files = 0;
  for (const fs::directory_entry& f : fs::directory_iterator(step)) {
    INFO(f.path());
    REQUIRE(read_bytes(f.path()) == read_bytes(fs::path(b) / "step_00000012" / f.path().filename()));
    files++;
  }
  REQUIRE(files >= 4);
}

TEST_CASE("tandem train --init-from starts GPT-2 from a Hugging Face directory's weights", "[e2e][gpt2]") {
  Workspace w;
  std::string first = (w.dir / "first").string(), hf = first + "/step_00000012";
  REQUIRE(w.train("--ckpt-dir " + first).exit_code == 0);
  // The first logged loss is the loaded weights' loss on the first training
  // batch, before any update: what tandem eval computes for that batch.
  std::string metrics = (w.dir / "m.jsonl").string();
  ShellResult r = w.train(fmt::format("--init-from {} --set max_steps=1 --set log_every=1 --metrics-out {}", hf, metrics));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.output.find("starting from the weights in " + hf) != std::string::npos);
  double step1 = nlohmann::json::parse(read_bytes(metrics).substr(0, read_bytes(metrics).find('\n')))["loss"];
  ShellResult eval = run_tandem(fmt::format("eval --checkpoint {} --data {}/text_train.bin --batch-size 4 --seq-len 16 "
                                            "--batches 1",
                                            hf, w.dir.string()));
  INFO(eval.output);
  REQUIRE(step1 == last_json(eval.output)["loss"].get<double>());
  REQUIRE(step1 < std::log(256.0) - 0.1);  // trained weights, not a fresh model's

  ShellResult missing = w.train("--init-from " + (w.dir / "nowhere").string());
  REQUIRE(missing.exit_code == 2);
  REQUIRE(missing.output.find("nowhere") != std::string::npos);
}

TEST_CASE("a GPT-2 run killed and resumed ends bitwise identical to an uninterrupted one", "[e2e][gpt2]") {
  Workspace w;
  std::string whole = (w.dir / "whole").string(), parts = (w.dir / "parts").string();
  REQUIRE(w.train("--set ckpt_every=5 --ckpt-dir " + whole).exit_code == 0);
  // A run that died after its step-5 checkpoint, resumed from it.
  ShellResult resumed = w.train("--resume " + whole + "/step_00000005 --ckpt-dir " + parts);
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  REQUIRE(resumed.output.find("resuming from") != std::string::npos);
  REQUIRE(read_bytes(fs::path(whole) / "step_00000012" / "model.safetensors") ==
          read_bytes(fs::path(parts) / "step_00000012" / "model.safetensors"));
}

TEST_CASE("tandem eval matches float64 GPT-2 computed from the checkpoint's files", "[e2e][gpt2]") {
  Workspace w;
  std::string ckpt = (w.dir / "ckpt").string();
  REQUIRE(w.train("--ckpt-dir " + ckpt).exit_code == 0);
  std::string val = (w.dir / "text_val.bin").string();
  ShellResult r = run_tandem(fmt::format("eval --checkpoint {} --data {} --batch-size 2 --seq-len 16 --batches 3", ckpt, val));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  nlohmann::json got = last_json(r.output);
  REQUIRE(got["batches"] == 3);

  std::vector<uint16_t> tokens = read_token_file(val);
  Gpt2Reference ref((fs::path(ckpt) / "step_00000012").string());
  double want = ref.stream_loss(std::vector<int32_t>(tokens.begin(), tokens.end()), 2, 16, 3);
  REQUIRE(std::fabs(got["loss"].get<double>() - want) <= 1e-5 * want);

  ShellResult bad = run_tandem(fmt::format("eval --checkpoint {} --data {}", (w.dir / "nothing").string(), val));
  REQUIRE(bad.exit_code != 0);
  REQUIRE(bad.output.find("neither config.json nor a valid step_* checkpoint") != std::string::npos);
}

TEST_CASE("tandem generate continues a prompt, reproducibly for a seed", "[e2e][gpt2]") {
  Workspace w;
  std::string ckpt = (w.dir / "ckpt").string();
  REQUIRE(w.train("--ckpt-dir " + ckpt).exit_code == 0);
  std::string args = "generate --checkpoint " + ckpt + " --prompt 'The quick' --tokens 40 --seed 3";
  ShellResult a = run_tandem(args), b = run_tandem(args);
  INFO(a.output);
  REQUIRE(a.exit_code == 0);
  REQUIRE(a.output.find("The quick") != std::string::npos);
  REQUIRE(a.output == b.output);
  ShellResult greedy = run_tandem("generate --checkpoint " + ckpt + " --prompt 'The' --tokens 10 --temperature 0");
  REQUIRE(greedy.exit_code == 0);
}

TEST_CASE("GPT-2 trains data-parallel under tandem launch", "[e2e][gpt2]") {
  Workspace w;
  ShellResult r = run_shell(fmt::format("{} launch --nproc-per-node 2 --backend gloo --master-port {} -- {} train "
                                        "--config {} --set batch_size=2 2>&1",
                                        tandem_binary(), free_port(), tandem_binary(), w.config()));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  nlohmann::json summary;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);)  // "[rank0] {...}"
    if (auto brace = line.find("{\""); brace != std::string::npos) summary = nlohmann::json::parse(line.substr(brace));
  REQUIRE(summary["steps"] == 12);
  REQUIRE(summary["val_loss"].get<double>() < std::log(256.0));
}

TEST_CASE("transformers' GPT2LMHeadModel loads a tandem checkpoint and agrees with tandem eval", "[e2e][gpt2]") {
  // Needs torch and transformers (transformers is not a Debian package):
  // TANDEM_PYTHON names an interpreter that has them; without them the test
  // says so and skips.
  std::optional<std::string> python = python_with("torch, transformers");
  if (!python) {
    WARN("SKIPPED: no python3 with torch and transformers (set TANDEM_PYTHON)");
    return;
  }
  std::string interpreter = *python;
  Workspace w;
  std::string ckpt = (w.dir / "ckpt").string();
  REQUIRE(w.train("--ckpt-dir " + ckpt).exit_code == 0);
  std::string args = fmt::format("--data {} --batch-size 2 --seq-len 16 --batches 3", (w.dir / "text_val.bin").string());
  ShellResult ours = run_tandem("eval --checkpoint " + ckpt + " " + args);
  ShellResult theirs = run_shell(fmt::format("{} {} --checkpoint {}/step_00000012 {} 2>&1", interpreter,
                                             source_path("bench/pytorch/hf_eval.py"), ckpt, args));
  INFO(ours.output << theirs.output);
  REQUIRE(ours.exit_code == 0);
  REQUIRE(theirs.exit_code == 0);
  double a = last_json(ours.output)["loss"], b = last_json(theirs.output)["loss"];
  REQUIRE(std::fabs(a - b) <= 1e-5 * b);
}

TEST_CASE("the character LSTM trains, evaluates and generates from its checkpoint", "[e2e][lstm]") {
  Workspace w;
  std::string config = (w.dir / "lstm.toml").string(), ckpt = (w.dir / "lstm").string();
  ShellResult first = run_tandem("train --config " + config + " --ckpt-dir " + ckpt);
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  double val_loss = last_json(first.output)["val_loss"];
  REQUIRE(val_loss < std::log(256.0));
  ShellResult second = run_tandem("train --config " + config + " --ckpt-dir " + (w.dir / "again").string());
  REQUIRE(read_bytes(fs::path(ckpt) / "step_00000012" / "model.safetensors") ==
          read_bytes(w.dir / "again" / "step_00000012" / "model.safetensors"));

  // The trainer's val_loss and tandem eval read the same 4 batches of 4 x 16 from the file's start.
  ShellResult eval = run_tandem(fmt::format("eval --checkpoint {} --data {}/text_val.bin --batch-size 4 --seq-len 16 "
                                            "--batches 4",
                                            ckpt, w.dir.string()));
  INFO(eval.output);
  REQUIRE(eval.exit_code == 0);
  REQUIRE(std::fabs(last_json(eval.output)["loss"].get<double>() - val_loss) <= 1e-6 * val_loss);
  ShellResult text = run_tandem("generate --checkpoint " + ckpt + " --prompt 'The quick' --tokens 20 --seed 1");
  REQUIRE(text.exit_code == 0);
  REQUIRE(text.output.find("The quick") != std::string::npos);
}
