#!/usr/bin/env python3
"""GPT-2 training-step throughput in plain PyTorch: the other side of
`tandem bench model`, measured the same way.

A minimal nanoGPT-style GPT-2 (no transformers): token and position
embeddings, pre-LayerNorm blocks of causal attention through
F.scaled_dot_product_attention (flash SDPA on a GPU) and a 4x GELU (tanh)
MLP, ln_f, and an LM head tied to wte. One step: zero grads, forward,
cross-entropy, backward, AdamW (lr 1e-4, weight decay 0.1 on every
parameter, betas and eps at their defaults, as tandem's). On CUDA: bf16
autocast over fp32 weights, fused AdamW, torch.compile unless --no-compile.
On the CPU: f32, no compile (a smoke check).

The timed loop is synchronized only at its two ends. FLOPs per token are
tandem's gpt2_flops_per_token: 6 N + 12 L C T, with N the parameters (the
tied wte counted once, wpe included). MFU is against the same dense bf16
peak tandem uses (the datasheet's when the device name is known, else a
measured 8192^3 bf16 matmul).

  python3 bench/pytorch/gpt2.py --model gpt2-124m --batch-size 8 --seq-len 1024 --steps 10 --warmup 3
  python3 bench/pytorch/gpt2.py --model gpt2-tiny --steps 2 --warmup 1 --no-compile   # CPU smoke check

Prints one JSON line (and writes it to --json FILE).
"""
import argparse
import json
import math
import sys
import time

PRESETS = {  # as bench/bench_model.cpp's gpt2_preset
    "gpt2-124m": dict(vocab_size=50257, n_positions=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-350m": dict(vocab_size=50257, n_positions=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-tiny": dict(vocab_size=256, n_positions=128, n_layer=4, n_head=4, n_embd=128),
}
LR = 1e-4
WEIGHT_DECAY = 0.1
SEED = 42
GPU_BATCH, CPU_BATCH, CPU_MAX_SEQ_LEN = 8, 4, 128
PEAK_MATMUL_SIZE, PEAK_WARMUP, PEAK_REPS = 8192, 3, 15


def num_parameters(c):
    """tandem's gpt2_num_parameters: the tied LM head counted once."""
    C = c["n_embd"]
    return c["vocab_size"] * C + c["n_positions"] * C + c["n_layer"] * (12 * C * C + 13 * C) + 2 * C


def flops_per_token(c, seq_len):
    """tandem's gpt2_flops_per_token (PaLM's accounting, as nanoGPT's MFU)."""
    return 6.0 * num_parameters(c) + 12.0 * c["n_layer"] * c["n_embd"] * seq_len


def datasheet_bf16_tflops(name):
    """Dense bf16 tensor-core TFLOP/s by device name, as tandem's; 0 if unknown."""
    if "NVL" in name:
        return 0.0
    if "H200" in name:
        return 989.4
    if "H100" in name:
        return 756.0 if "PCIe" in name else 989.4
    if "A100" in name:
        return 312.0
    return 0.0


def parse_args(argv):
    p = argparse.ArgumentParser(description="GPT-2 training-step throughput in PyTorch (tandem bench model's twin)")
    p.add_argument("--model", default="gpt2-124m", help="gpt2-124m, gpt2-350m or gpt2-tiny")
    p.add_argument("--batch-size", type=int, default=0, help="sequences per step (default 8 on GPU, 4 on CPU)")
    p.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (default n_positions on GPU, <= 128 on CPU)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--dtype", default="", help="f32 or bf16 (default bf16 autocast on GPU, f32 on CPU)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the model (default on a GPU)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="run eagerly (default on the CPU)")
    p.add_argument("--json", default="", help="also write the result to this file")
    return p.parse_args(argv)


def fail(message):
    print(f"gpt2.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def build_model(torch, config):
    """The model class is defined here so that the module imports without torch."""
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            C = c["n_embd"]
            self.n_head = c["n_head"]
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.c_attn = nn.Linear(C, 3 * C)
            self.attn_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C, eps=1e-5)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self, c):
            super().__init__()
            C, L = c["n_embd"], c["n_layer"]
            self.wte = nn.Embedding(c["vocab_size"], C)
            self.wpe = nn.Embedding(c["n_positions"], C)
            self.h = nn.ModuleList(Block(c) for _ in range(L))
            self.ln_f = nn.LayerNorm(C, eps=1e-5)
            self.lm_head = nn.Linear(C, c["vocab_size"], bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            # transformers' init, as tandem's: N(0, 0.02), residual
            # projections scaled by 1/sqrt(2L), biases 0, LayerNorm 1 and 0.
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    continue  # LayerNorm and biases keep PyTorch's 1 / 0
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            for m in self.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

        def forward(self, idx, targets):
            T = idx.size(1)
            pos = torch.arange(T, device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return GPT2(config)


def measured_matmul_tflops(torch, device):
    n = PEAK_MATMUL_SIZE
    a = torch.rand(n, n, device=device, dtype=torch.bfloat16) * 2 - 1
    b = torch.rand(n, n, device=device, dtype=torch.bfloat16) * 2 - 1
    for _ in range(PEAK_WARMUP):
        torch.mm(a, b)
    times = []
    for _ in range(PEAK_REPS):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return 2.0 * n * n * n / (times[len(times) // 2] * 1e-3) / 1e12


def main(argv):
    args = parse_args(argv)
    if args.model not in PRESETS:
        fail(f"unknown model '{args.model}' (expected {', '.join(PRESETS)})")
    try:
        import torch
    except ImportError as e:
        print(f"PyTorch is not installed ({e}): pip install torch to run the PyTorch side of the comparison",
              file=sys.stderr)
        return 3
    config = PRESETS[args.model]

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        fail(f"--device {args.device} needs a CUDA GPU, but torch sees none")
    if gpu and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = args.dtype or ("bf16" if gpu else "f32")
    if dtype not in ("f32", "bf16"):
        fail(f"unknown --dtype '{dtype}' (expected f32 or bf16)")
    if not gpu and dtype != "f32":
        fail(f"--dtype {dtype} needs a CUDA device; the CPU run is f32")
    B = args.batch_size or (GPU_BATCH if gpu else CPU_BATCH)
    T = args.seq_len or (config["n_positions"] if gpu else min(config["n_positions"], CPU_MAX_SEQ_LEN))
    if B < 1 or T < 1:
        fail(f"--batch-size and --seq-len must be positive, got {B} and {T}")
    if T > config["n_positions"]:
        fail(f"--seq-len {T} is longer than {args.model}'s n_positions {config['n_positions']}")
    if args.steps < 1 or args.warmup < 0:
        fail(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    compile_model = gpu if args.compile is None else args.compile
    if compile_model and args.warmup == 0:
        print("gpt2.py: warning: --warmup 0 with torch.compile times the compilation too", file=sys.stderr)

    if gpu:
        torch.cuda.set_device(device)
        # f32 matmuls as tandem's (no TF32); under bf16 autocast the GEMMs are bf16 anyway.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(SEED)
    model = build_model(torch, config).to(device)
    parameters = sum(p.numel() for p in model.parameters())  # the tied weight once
    if parameters != num_parameters(config):
        raise AssertionError(f"the model has {parameters} parameters, the formula says {num_parameters(config)}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=gpu)
    step_model = torch.compile(model) if compile_model else model

    generator = torch.Generator(device="cpu").manual_seed(SEED + 1)
    tokens = torch.randint(0, config["vocab_size"], (B, T + 1), generator=generator).to(device)
    inputs, targets = tokens[:, :T].contiguous(), tokens[:, 1:].contiguous()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = step_model(inputs, targets)
        loss.backward()
        optimizer.step()
        return loss

    def sync():
        if gpu:
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - start
    loss = loss.item()
    if not math.isfinite(loss):
        print(f"gpt2.py: error: the loss of the last step is {loss}", file=sys.stderr)
        return 1

    tokens_per_s = B * T * args.steps / seconds
    fpt = flops_per_token(config, T)
    model_tflops = fpt * tokens_per_s / 1e12
    device_name = torch.cuda.get_device_name(device) if gpu else "cpu"
    peak, source = None, None
    if gpu:
        peak, source = datasheet_bf16_tflops(device_name), "datasheet"
        if peak <= 0:
            peak, source = measured_matmul_tflops(torch, device), "measured"
    result = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "compile": bool(compile_model),
        "model": args.model,
        "config": config,
        "parameters": parameters,
        "batch_size": B,
        "seq_len": T,
        "dtype": dtype,
        "device": str(device),
        "device_name": device_name,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_ms": 1e3 * seconds / args.steps,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "model_tflops": model_tflops,
        "peak_tflops": peak,
        "peak_source": source,
        "mfu": model_tflops / peak if peak else None,
        "loss": loss,
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
