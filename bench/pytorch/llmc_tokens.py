"""llm.c token files and `tandem eval`'s loss over them, for the PyTorch
cross-checks (hf_eval.py, torch_eval.py): a header of 256 int32 (magic
20240520, version 1, token count), then uint16 tokens; batch i reads B*T+1
tokens from offset i*B*T, inputs the first B*T, targets the next token."""
import array
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


def mean_token_loss(logits_of, tokens, B, T, batches):
    """The mean over `batches` batches of the next-token cross-entropy of
    logits_of(x), x a (B, T) tensor of token ids; 0 batches: all that fit."""
    import torch
    import torch.nn.functional as F

    batches = batches or (len(tokens) - 1) // (B * T)
    total = 0.0
    with torch.no_grad():
        for i in range(batches):
            chunk = torch.tensor(tokens[i * B * T : (i + 1) * B * T + 1], dtype=torch.long)
            x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
            total += F.cross_entropy(logits_of(x).reshape(B * T, -1), y.reshape(-1)).item()
    return {"loss": total / batches, "batches": batches, "batch_size": B, "seq_len": T}
