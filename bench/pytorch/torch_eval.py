#!/usr/bin/env python3
"""`tandem eval` in PyTorch for the mlp, cnn, resnet and lstm: builds the
torch.nn model a tandem checkpoint's config describes, loads the step's
model.safetensors into it with load_state_dict(strict=True), and prints the
same JSON line as `tandem eval`, computed in float64:

  image classifiers: {"loss", "accuracy", "images"} on the Fashion-MNIST test
    set, pixels normalised as tandem does ((x / 255 - 0.2860) / 0.3530);
  lstm: {"loss", "batches", "batch_size", "seq_len"}, the mean next-token
    cross-entropy over llm.c's batches (batch i reads B*T+1 tokens from
    offset i*B*T of the token file).

  python3 bench/pytorch/torch_eval.py --checkpoint runs/cnn/step_00001407
  python3 bench/pytorch/torch_eval.py --checkpoint runs/lstm/step_00001500 \\
      --data data/fortunes_val.bin --batch-size 4 --seq-len 64 --batches 8

The classes below are the models a PyTorch user loads tandem's weights into.
Exit code 77 (skipped) when torch is not installed. Reads the safetensors
file itself, so the safetensors package is not needed.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import tomllib

import numpy as np

from llmc_tokens import mean_token_loss, read_tokens

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("SKIPPED: torch is not installed", file=sys.stderr)
    sys.exit(77)


# ---- models, with tandem's parameter names


class Mlp(nn.Module):
    def __init__(self, o, features, classes):
        super().__init__()
        layers, width = [], features
        for h in o.get("hidden", [256]):
            layers += [nn.Linear(width, h), nn.GELU(approximate="tanh") if o.get("activation") == "gelu" else nn.ReLU()]
            if o.get("dropout", 0) > 0:
                layers.append(nn.Dropout(o["dropout"]))
            width = h
        self.layers = nn.Sequential(*layers, nn.Linear(width, classes))

    def forward(self, x):
        return self.layers(x)


class Cnn(nn.Module):
    def __init__(self, o, side, classes):
        super().__init__()
        bn = o.get("batchnorm", False)
        layers, channels = [nn.Unflatten(1, (1, side, side))], 1
        for c in o.get("channels", [32, 64]):
            layers.append(nn.Conv2d(channels, c, 3, padding=1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels, side = c, side // 2
        layers += [nn.Flatten(), nn.Linear(channels * side * side, o.get("hidden", 128)), nn.ReLU()]
        if o.get("dropout", 0) > 0:
            layers.append(nn.Dropout(o["dropout"]))
        self.layers = nn.Sequential(*layers, nn.Linear(o.get("hidden", 128), classes))

    def forward(self, x):
        return self.layers(x)


class BasicBlock(nn.Module):  # torchvision's
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, o, side, classes):
        super().__init__()
        channels, blocks = o.get("channels", [16, 32, 64]), o.get("blocks", 1)
        self.side = side
        self.conv1 = nn.Conv2d(1, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        width = channels[0]
        for s, c in enumerate(channels):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(width, c, 2 if s > 0 and b == 0 else 1))
                width = c
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
        self.stages = len(channels)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x.view(-1, 1, self.side, self.side))))
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class CharLstm(nn.Module):
    def __init__(self, o):
        super().__init__()
        vocab = o.get("vocab_size", 256)
        self.embedding = nn.Embedding(vocab, o.get("embedding", 64))
        self.lstm = nn.LSTM(o.get("embedding", 64), o.get("hidden", 256), o.get("layers", 2), batch_first=True)
        self.head = nn.Linear(o.get("hidden", 256), vocab)

    def forward(self, tokens):
        return self.head(self.lstm(self.embedding(tokens))[0])


# ---- files


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        raw = np.frombuffer(data[begin:end], dtype="<u2" if t["dtype"] == "BF16" else "<f4")
        if t["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {t['dtype']}; this reader takes F32 and BF16")
        tensors[name] = torch.from_numpy(raw.astype(np.float64).reshape(t["shape"]))
    return tensors


def read_idx(path):
    with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory, stem):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    sys.exit(f"{directory}: no {stem}[.gz]")


# ---- evaluation


def eval_images(model, data_dir, batch_size):
    images = read_idx(find(data_dir, "t10k-images-idx3-ubyte"))
    labels = torch.from_numpy(read_idx(find(data_dir, "t10k-labels-idx1-ubyte")).astype(np.int64))
    # tandem normalises in float32: the same rounding, then float64.
    x = (images.reshape(len(images), -1).astype(np.float32) / np.float32(255) - np.float32(0.2860)) / np.float32(0.3530)
    x = torch.from_numpy(x.astype(np.float64))
    loss, correct = 0.0, 0
    for begin in range(0, len(x), batch_size):
        logits = model(x[begin : begin + batch_size])
        y = labels[begin : begin + batch_size]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
    return {"loss": loss / len(x), "accuracy": correct / len(x), "images": len(x)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a tandem step directory (manifest.json + model.safetensors)")
    p.add_argument("--data", help="token file (lstm, required) or Fashion-MNIST directory (default: the config's)")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=0)
    p.add_argument("--batches", type=int, default=0)
    args = p.parse_args()

    with open(os.path.join(args.checkpoint, "manifest.json")) as f:
        config = tomllib.loads(json.load(f)["config"])
    name = config["model"]
    options = config.get(name, {})
    torch.set_grad_enabled(False)
    if name in ("mlp", "cnn", "resnet"):
        features, classes = 28 * 28, 10
        model = {"mlp": lambda: Mlp(options, features, classes), "cnn": lambda: Cnn(options, 28, classes),
                 "resnet": lambda: ResNet(options, 28, classes)}[name]()
    elif name == "lstm":
        model = CharLstm(options)
    else:
        sys.exit(f"{args.checkpoint} holds a '{name}' model; this script takes mlp, cnn, resnet and lstm")
    model.load_state_dict(read_safetensors(os.path.join(args.checkpoint, "model.safetensors")), strict=True)
    model = model.double().eval()

    if name == "lstm":
        if not args.data:
            sys.exit("--data (a token file) is required for the lstm")
        seq_len = args.seq_len or config.get("seq_len", 64)
        out = mean_token_loss(model, read_tokens(args.data), args.batch_size or 4, seq_len, args.batches)
    else:
        out = eval_images(model, args.data or config["data_dir"], args.batch_size or 1000)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
