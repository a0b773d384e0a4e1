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
import json
import sys

from llmc_tokens import mean_token_loss, read_tokens


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
        from transformers import GPT2LMHeadModel
    except ImportError as e:
        print(f"SKIPPED: {e.name} is not installed", file=sys.stderr)
        sys.exit(77)

    model = GPT2LMHeadModel.from_pretrained(args.checkpoint, torch_dtype=torch.float64).eval()
    tokens = read_tokens(args.data)
    print(json.dumps(mean_token_loss(lambda x: model(x).logits, tokens, args.batch_size, args.seq_len, args.batches)))


if __name__ == "__main__":
    main()
