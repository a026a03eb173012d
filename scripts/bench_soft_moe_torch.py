"""Soft routing in PyTorch eager on the CPU: the counterpart of `moeseg bench routing --routing soft`.

Shapes (as the Rust bench):
- `enet`, `deeplab`, `small`: SoftConvMoE in place of a 3x3 conv (pad 1, bias) of C -> C
  channels (16 at 256x512 batch 2; 256 at 128x256 batch 1; 64 at 64x128 batch 2), n experts,
  p slots per expert, a g x g grid. The layer is the reference of
  `scripts/fixtures/soft_conv_moe.py` with its per-token Python loop replaced by what a PyTorch
  user would write (one F.pad + Tensor.unfold for the tokens, a reshape/permute for the
  reassembly; checked against the fixture reference before timing); the experts run as the
  `soft-moe` package runs them, one call per expert.
- `vit-tiny`: the `soft-moe` package's own `SoftMoELayerWrapper` with timm's `Mlp` experts
  (dim 192, hidden 768, GELU) at ViT-Tiny's 197 tokens, n = --experts (8 by default, as the
  Rust bench; the Soft-MoE ViT factories use 128) and p = --slots-per-expert, next to one
  dense `Mlp`.

Forward: eval mode under torch.no_grad(). Forward + backward: loss = sum(y * g) with a fixed
random g, gradients for the input and every parameter, set to None after each run. Median of
--repeats runs after one warm-up, torch.set_num_threads(number of cores).

    ours=$(cargo run --release -- bench routing --routing soft --shape enet | tail -n 1)
    python3 scripts/bench_soft_moe_torch.py --shape enet --ours "$ours"
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures.soft_conv_moe import soft_conv_moe as reference  # noqa: E402

SHAPES = {
    "enet": (16, (256, 512), 2),
    "deeplab": (256, (128, 256), 1),
    "small": (64, (64, 128), 2),
    "vit-tiny": (192, (197, 0), 2),
}


class SoftConvMoE(nn.Module):
    def __init__(self, channels, experts, slots, grid):
        super().__init__()
        self.phi = nn.Parameter(torch.randn(channels, experts, slots) / math.sqrt(channels))
        self.scale = nn.Parameter(torch.ones(1))
        self.experts = nn.ModuleList(
            [nn.Conv2d(channels, channels, 3, padding=0) for _ in range(experts)]
        )
        self.grid = grid

    def forward(self, x):
        b, c, h, w = x.shape
        ph, pw = math.ceil(h / self.grid), math.ceil(w / self.grid)
        rows, cols = math.ceil(h / ph), math.ceil(w / pw)
        padded = F.pad(x, (1, 1 + cols * pw - w, 1, 1 + rows * ph - h))
        tokens = padded.unfold(2, ph + 2, ph).unfold(3, pw + 2, pw)  # b c rows cols th tw
        tokens = tokens.permute(0, 2, 3, 1, 4, 5).reshape(b, rows * cols, c, ph + 2, pw + 2)
        m = rows * cols
        n, p = self.phi.shape[1], self.phi.shape[2]
        desc = F.normalize(tokens.mean(dim=(3, 4)), dim=2)
        phi = self.scale * F.normalize(self.phi, dim=0)
        logits = torch.einsum("bmd,dnp->bmnp", desc, phi).reshape(b, m, n * p)
        dispatch, combine = torch.softmax(logits, dim=1), torch.softmax(logits, dim=2)
        slots = torch.einsum("bmd,bms->bsd", tokens.reshape(b, m, -1), dispatch)
        slots = slots.reshape(b, n, p, c, ph + 2, pw + 2)
        ys = torch.stack(
            [
                f(slots[:, j].reshape(b * p, c, ph + 2, pw + 2)).reshape(b, p, -1)
                for j, f in enumerate(self.experts)
            ],
            dim=1,
        ).reshape(b, n * p, -1)
        y = torch.einsum("bsd,bms->bmd", ys, combine).reshape(b, rows, cols, c, ph, pw)
        return y.permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * ph, cols * pw)[:, :, :h, :w]


def check_against_reference():
    torch.manual_seed(0)
    layer = SoftConvMoE(4, 3, 2, 3)
    x = torch.randn(2, 4, 10, 13)
    weights = [f.weight for f in layer.experts]
    biases = [f.bias for f in layer.experts]
    want, _, _ = reference(x, layer.phi, layer.scale, weights, biases, (4, 5), 1, 1)
    got = layer(x)
    err = (got - want).abs().max().item()
    assert err < 1e-5, f"vectorised layer differs from the fixture reference by {err}"


def median_ms(repeats, run):
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_module(module, x, upstream, repeats):
    module.eval()
    with torch.no_grad():
        fwd = median_ms(repeats, lambda: module(x))
    module.train()
    leaf = x.clone().requires_grad_(True)

    def step():
        (module(leaf) * upstream).sum().backward()
        leaf.grad = None
        for p in module.parameters():
            p.grad = None

    return fwd, median_ms(repeats, step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--slots-per-expert", type=int, default=1)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ours", help="the Rust bench's summary line, for the ratios")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    channels, (height, width), default_batch = SHAPES[args.shape]
    batch = args.batch or default_batch
    if args.shape == "vit-tiny":
        from soft_moe import SoftMoELayerWrapper
        from timm.layers import Mlp

        experts = args.experts
        layer = SoftMoELayerWrapper(
            dim=channels,
            num_experts=experts,
            slots_per_expert=args.slots_per_expert,
            layer=Mlp,
            in_features=channels,
            hidden_features=4 * channels,
        )
        dense = Mlp(in_features=channels, hidden_features=4 * channels)
        shape = (batch, height, channels)
    else:
        check_against_reference()
        experts = args.experts
        layer = SoftConvMoE(channels, experts, args.slots_per_expert, args.grid)
        dense = nn.Conv2d(channels, channels, 3, padding=1)
        shape = (batch, channels, height, width)
    x = torch.randn(shape)
    upstream = torch.randn(shape)
    dense_fwd, dense_train = time_module(dense, x, upstream, args.repeats)
    layer_fwd, layer_train = time_module(layer, x, upstream, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, shape {args.shape} {shape}")
    summary = {
        "layer_fwd_ms": layer_fwd,
        "layer_fwd_bwd_ms": layer_train,
        "dense_fwd_ms": dense_fwd,
        "dense_fwd_bwd_ms": dense_train,
    }
    if args.ours:
        ours = dict(kv.split("=", 1) for kv in args.ours.split() if "=" in kv)
        for key, value in summary.items():
            if key in ours:
                print(f"  {key:<18} ours {float(ours[key]):9.3f}  torch {value:9.3f}  "
                      f"ours/torch {float(ours[key]) / value:.2f}")
    print(
        f"routing=soft shape={args.shape} batch={batch} threads={torch.get_num_threads()} "
        f"experts={experts} slots_per_expert={args.slots_per_expert} "
        + " ".join(f"{k}={v:.3f}" for k, v in summary.items())
    )


if __name__ == "__main__":
    main()
