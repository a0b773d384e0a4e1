#!/usr/bin/env python3
"""`tandem eval` in Hugging Face transformers: loads a tandem GPT-2 checkpoint
(a step directory: config.json + model.safetensors) with
GPT2LMHeadModel.from_pretrained and prints the same JSON line as
`tandem eval`: the mean next-token cross-entropy over llm.c's batches
(batch i reads B*T+1 tokens from offset i*B*T of the token file).

  python3 bench/pytorch/hf_eval.py --checkpoint runs/tiny/step_00002000 \
      --data data/fortunes_val.bin --batch-size 4 --seq-len 128 --batches 8

Exit code 77 (skipped) when torch or transformers is not installed.
"""
import argparse
import array
import json
import sys


def read_tokens(path):
    with open(path, "rb") as f:
        header = array.array("i")
        header.frombytes(f.read(256 * 4))
        if header[0] != 20240520 or header[1] != 1:
            sys.exit(f"{path}: not an llm.c token file (magic {header[0]}, version {header[1]})")
        tokens = array.array("H")
        tokens.frombytes(f.read(header[2] * 2))
    if sys.byteorder != "little":
        tokens.byteswap()
    return tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batches", type=int, default=1)
    args = p.parse_args()
    try:
        import torch
        import torch.nn.functional as F
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        print(f"SKIPPED: {e.name} is not installed", file=sys.stderr)
        sys.exit(77)

    model = GPT2LMHeadModel.from_pretrained(args.checkpoint, torch_dtype=torch.float64).eval()
    tokens = read_tokens(args.data)
    B, T = args.batch_size, args.seq_len
    total = 0.0
    with torch.no_grad():
        for i in range(args.batches):
            chunk = torch.tensor(tokens[i * B * T : (i + 1) * B * T + 1], dtype=torch.long)
            x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
            logits = model(x).logits
            total += F.cross_entropy(logits.reshape(B * T, -1), y.reshape(-1)).item()
    print(json.dumps({"loss": total / args.batches, "batches": args.batches, "batch_size": B, "seq_len": T}))


if __name__ == "__main__":
    main()
