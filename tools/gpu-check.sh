#!/usr/bin/env bash
# On a machine with a GPU: build with CUDA (or use a build made elsewhere and
# copied here with tools/bundle.sh), run every GPU test (kernels against
# their CPU twins, NCCL with world size 1, the simulated network), the DDP
# overlap benchmark on the simulated network, NCCL collectives on one GPU,
# the kernel benchmarks, CNN/ResNet/LSTM training steps and GPT-2 124M
# training steps (beside the same steps in PyTorch when torch is installed),
# and print the kernel table last.
#   tools/gpu-check.sh            build into build-gpu/ here, then check
#   tools/gpu-check.sh DIR        use the existing build in DIR
# Writes DIR/gpu-tests.log, DIR/bench-overlap.json, DIR/bench-nccl.json,
# DIR/bench-kernels.json, DIR/bench-model.json, DIR/bench-model-{cnn,resnet,lstm}.json and, with torch,
# DIR/bench-model-pytorch.json.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$PATH:/usr/local/cuda/bin"
# The CUDA libraries a copied build leaves out: the toolkit's, else PyTorch's wheels.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, q, "lib") for p in nvidia.__path__ for q in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done

build=${1:-}
if [ -z "$build" ]; then
  build=build-gpu
  CCACHE_BASEDIR="$root" cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON >/dev/null || exit 1
  cmake --build "$build" -j"$(nproc)" || exit 1
fi
[ -x "$build/tandem" ] || { echo "gpu-check: no tandem binary in $build"; exit 1; }

nvidia-smi -L || { echo "gpu-check: no GPU visible"; exit 1; }
status=0
echo "== GPU tests"
"$build/tests/tests_gpu" 2>&1 | tee "$build/gpu-tests.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 77 ]; then echo "gpu-check: FAILED: the GPU tests skipped on a GPU machine"; status=1;
elif [ "$rc" -ne 0 ]; then echo "gpu-check: FAILED: GPU tests (exit $rc)"; status=1; fi

echo "== DDP overlap on a simulated network (target: exposed <= 10% of all-reduce)"
"$build/tandem" bench overlap --simulated --device cuda --json "$build/bench-overlap.json" 2>&1 | tail -n 3
[ "${PIPESTATUS[0]}" -ne 0 ] && { echo "gpu-check: FAILED: bench overlap"; status=1; }

echo "== NCCL collectives, world size 1"
"$build/tandem" bench collectives --backend nccl --max-bytes 268435456 --json "$build/bench-nccl.json" 2>&1 | tail -n 5
[ "${PIPESTATUS[0]}" -ne 0 ] && { echo "gpu-check: FAILED: bench collectives (nccl)"; status=1; }

# GPT-2 end to end on the GPU (bf16): two trainings with the same seed must
# write bitwise-identical checkpoints; tandem eval on the GPU, and, where
# transformers is installed, GPT2LMHeadModel on the same checkpoint.
echo "== GPT-2 tiny on the GPU: determinism, eval, transformers"
g="$build/gpt2-check"
rm -rf "$g" && mkdir -p "$g"
"$build/tandem" data tokenize --input README.md --input docs/ARCHITECTURE.md --out-prefix "$g/text" >/dev/null
gpt2_train() {
  "$build/tandem" train --config models/gpt2/tiny.toml --set device=cuda --set dtype=bf16 --set max_steps=60 \
    --set seq_len=64 --set train_data="$g/text_train.bin" --set val_data="$g/text_val.bin" --set eval_every=60 \
    --ckpt-dir "$g/$1" 2>&1 | tail -n 1
}
gpt2_train a && gpt2_train b
if cmp -s "$g/a/step_00000060/model.safetensors" "$g/b/step_00000060/model.safetensors"; then
  echo "two GPU runs with the same seed: bitwise-identical checkpoints"
else
  echo "gpu-check: FAILED: two GPU runs with the same seed differ"; status=1
fi
eval_args="--data $g/text_val.bin --batch-size 4 --seq-len 64 --batches 4"
"$build/tandem" eval --checkpoint "$g/a" --device cuda $eval_args || { echo "gpu-check: FAILED: eval on cuda"; status=1; }
"$build/tandem" eval --checkpoint "$g/a" --device cpu $eval_args
python3 bench/pytorch/hf_eval.py --checkpoint "$g/a/step_00000060" $eval_args
rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && { echo "gpu-check: FAILED: transformers did not load the checkpoint"; status=1; }

# The cuDNN convolution and LSTM paths and our batch-norm and pooling
# kernels inside whole training steps (random data: the device has no
# Fashion-MNIST), with their images/s and tokens/s for bench/RESULTS.md.
echo "== CNN, ResNet and LSTM training steps on the GPU"
for m in cnn resnet lstm; do
  "$build/tandem" bench model --model "$m" --device cuda --steps 20 --warmup 5 --json "$build/bench-model-$m.json" 2>&1 |
    grep -E "^# bench|dtype|batch|per_s|step_ms|MFU|loss"
  [ "${PIPESTATUS[0]}" -ne 0 ] && { echo "gpu-check: FAILED: bench model --model $m"; status=1; }
done

echo "== kernel benchmarks"
"$build/tandem" bench kernels --device cuda --json "$build/bench-kernels.json" > "$build/bench-kernels.txt" 2>&1
rc=$?
[ "$rc" -ne 0 ] && { echo "gpu-check: FAILED: bench kernels (exit $rc)"; status=1; }

# About a minute: 13 steps of B=8 x T=1024 tokens, and on the PyTorch side
# torch.compile's first compilation. The PyTorch side is a comparison, not
# a check of tandem: its failure is reported, not counted.
echo "== GPT-2 124M training steps (bf16, B=8, T=1024, AdamW)"
rm -f "$build/bench-model.json" "$build/bench-model-pytorch.json"
"$build/tandem" bench model --model gpt2-124m --device cuda --batch-size 8 --seq-len 1024 --steps 10 --warmup 3 \
  --json "$build/bench-model.json" 2>&1 | tail -n 10
[ "${PIPESTATUS[0]}" -ne 0 ] && { echo "gpu-check: FAILED: bench model"; status=1; }
if python3 -c 'import torch' 2>/dev/null; then
  echo "== the same steps in PyTorch (bench/pytorch/gpt2.py, torch.compile, bf16 autocast, fused AdamW)"
  python3 bench/pytorch/gpt2.py --model gpt2-124m --device cuda --batch-size 8 --seq-len 1024 --steps 10 --warmup 3 \
    --json "$build/bench-model-pytorch.json" 2>&1 | tail -n 3
  if [ "${PIPESTATUS[0]}" -eq 0 ] && [ -s "$build/bench-model.json" ]; then
    python3 - "$build/bench-model.json" "$build/bench-model-pytorch.json" <<'EOF'
import json, sys
t, p = (json.load(open(f)) for f in sys.argv[1:3])
ratio = t["tokens_per_s"] / p["tokens_per_s"]
print(f"tokens/s: tandem {t['tokens_per_s']:.0f} (MFU {100 * t['mfu']:.1f} %), "
      f"PyTorch {p['tokens_per_s']:.0f} (MFU {100 * p['mfu']:.1f} %): tandem / PyTorch = {ratio:.2f}")
EOF
  else
    echo "gpu-check: WARNING: no tandem / PyTorch ratio (see the output above)"
  fi
else
  echo "== PyTorch is not installed here: no side-by-side GPT-2 figure"
fi
echo "== GPU tests: $(tail -n 2 "$build/gpu-tests.log" | tr '\n' ' ')"
cat "$build/bench-kernels.txt"
exit $status
