"""PatchConvMoE in PyTorch eager on the CPU: the counterpart of `moeseg bench routing`.

Times the reference module of `scripts/fixtures/moe.py` (imported, not copied) built with the
same config and shapes as the Rust bench -- a 3x3 conv (pad 1, bias) of C -> C channels replaced
by E experts, top-k, a g x g grid, the 2conv_gap gate and the entropy balancing loss -- and
PyTorch's dense conv (F.conv2d) of the same shape:

- layer forward: eval mode under torch.no_grad();
- layer forward + backward: train mode, loss = sum(y * g) + balance loss with a fixed random g,
  gradients for the input and every parameter, set to None after each run;
- dense forward / forward + backward: F.conv2d with the same two protocols.

Every time is the median of --repeats runs after one warm-up run, with
torch.set_num_threads(number of cores), as the Rust bench (rayon uses one thread per core).

What the reference is: its expert part is already batched per expert (for each expert,
`tokens[rows]` gathers its tokens, one F.conv2d, `index_add` back), but the patch split is a
Python loop over the T tokens (one slice per token, then torch.stack). So a second variant,
`unfold`, replaces only the split by one `F.pad` + `Tensor.unfold` + `reshape` (a subclass
overriding `tokens`), which is what a PyTorch user would write; both are timed and checked to
give the same output.

Run both side by side (same machine, one after the other):

    cargo run --release -- bench routing --shape small && python3 scripts/bench_moe_torch.py --shape small

or let this script print the ratios ours / PyTorch from the Rust summary line:

    ours=$(cargo run --release -- bench routing --shape small | tail -n 1)
    python3 scripts/bench_moe_torch.py --shape small --ours "$ours"

The last line is a machine-readable summary in the Rust bench's format
(`shape=… batch=… threads=… layer_fwd_ms=… layer_fwd_bwd_ms=… dense_fwd_ms=… dense_fwd_bwd_ms=…`
for the reference, `unfold_layer_fwd_ms=… unfold_layer_fwd_bwd_ms=…`, then the same keys with
`_best_ms` for the minimum over the runs).
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures.moe import PatchConvMoE  # noqa: E402

# name: (channels, (height, width), default batch); as `moeseg bench routing --shape`.
SHAPES = {
    "enet": (16, (256, 512), 2),
    "deeplab": (256, (128, 256), 1),
    "small": (64, (64, 128), 2),
}


class PatchConvMoEUnfold(PatchConvMoE):
    """The reference with a vectorised patch split: the same tokens, in the same order."""

    def tokens(self, x):
        B, C, H, W = x.shape
        ph, pw = math.ceil(H / self.grid), math.ceil(W / self.grid)
        Hp, Wp = ph * math.ceil(H / ph), pw * math.ceil(W / pw)
        h = self.dilation * (self.kernel - 1) // 2
        xp = F.pad(x, (h, h + Wp - W, h, h + Hp - H))
        nh, nw = Hp // ph, Wp // pw
        th, tw = ph + 2 * h, pw + 2 * h
        # [B, C, nh, nw, th, tw] -> [B, nh, nw, C, th, tw] -> [T, C, th, tw]
        patches = xp.unfold(2, th, ph).unfold(3, tw, pw)
        toks = patches.permute(0, 2, 3, 1, 4, 5).reshape(B * nh * nw, C, th, tw)
        return toks, (B, H, W, ph, pw, nh, nw)


def time_runs(repeats, run):
    """(median, best) of `repeats` wall times in ms after one warm-up run. The median is the
    reported figure; the best is printed next to it because a shared machine's load only ever
    adds time."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def clear_grads(x, params):
    x.grad = None
    for p in params:
        p.grad = None


def time_layer(model, x, g, repeats):
    model.eval()

    def forward():
        with torch.no_grad():
            model(x)

    fwd = time_runs(repeats, forward)
    model.train()
    xg = x.detach().clone().requires_grad_(True)
    params = list(model.parameters())

    def forward_backward():
        out, loss = model(xg)
        ((out * g).sum() + loss).backward()
        clear_grads(xg, params)

    fwd_bwd = time_runs(repeats, forward_backward)
    counts = torch.bincount(model.record["indices"].flatten(), minlength=model.num_experts)
    return fwd, fwd_bwd, counts.tolist()


def parse_summary(line):
    pairs = (item.split("=", 1) for item in line.split() if "=" in item)
    return {key: value for key, value in pairs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours", default=None,
                        help="the summary line of `moeseg bench routing` to print ratios against")
    args = parser.parse_args()

    channels, (height, width), default_batch = SHAPES[args.shape]
    batch = args.batch or default_batch
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)

    config = dict(experts=args.experts, k=args.k, grid=args.grid, gate="2conv_gap",
                  balance="entropy")
    reference = PatchConvMoE(channels, channels, 3, **config)
    unfold = PatchConvMoEUnfold(channels, channels, 3, **config)
    unfold.load_state_dict(reference.state_dict())
    dense = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, height, width)
    g = torch.randn(batch, channels, height, width)

    reference.eval()
    unfold.eval()
    with torch.no_grad():
        same = torch.allclose(reference(x)[0], unfold(x)[0], atol=1e-5)
    if not same:
        raise SystemExit("the unfold variant does not reproduce the reference's output")

    print(f"bench_moe_torch: shape {args.shape} = [{batch}, {channels}, {height}, {width}], "
          f"3x3 conv; E = {args.experts}, k = {args.k}, grid {args.grid}x{args.grid}; 2conv_gap "
          f"gate, entropy loss; torch {torch.__version__} eager CPU, {torch.get_num_threads()} "
          f"threads; median of {args.repeats} runs")

    def dense_forward():
        with torch.no_grad():
            F.conv2d(x, dense.weight, dense.bias, padding=1)

    xg = x.detach().clone().requires_grad_(True)
    dense_params = list(dense.parameters())

    def dense_forward_backward():
        (F.conv2d(xg, dense.weight, dense.bias, padding=1) * g).sum().backward()
        clear_grads(xg, dense_params)

    dense_fwd = time_runs(args.repeats, dense_forward)
    dense_fwd_bwd = time_runs(args.repeats, dense_forward_backward)
    ref_fwd, ref_fwd_bwd, ref_counts = time_layer(reference, x, g, args.repeats)
    unf_fwd, unf_fwd_bwd, unf_counts = time_layer(unfold, x, g, args.repeats)

    k = args.k
    print(f"\n  {'part':<34} {'median ms':>10} {'best ms':>10}  comparison (on the medians)")
    rows = [
        ("F.conv2d fwd", dense_fwd, ""),
        ("PatchConvMoE reference fwd", ref_fwd,
         f"{ref_fwd[0] / dense_fwd[0]:.2f}x dense, {ref_fwd[0] / (k * dense_fwd[0]):.2f}x k x dense"),
        ("PatchConvMoE unfold-split fwd", unf_fwd,
         f"{unf_fwd[0] / dense_fwd[0]:.2f}x dense, {unf_fwd[0] / (k * dense_fwd[0]):.2f}x k x dense"),
        ("F.conv2d fwd+bwd", dense_fwd_bwd, ""),
        ("PatchConvMoE reference fwd+bwd", ref_fwd_bwd,
         f"{ref_fwd_bwd[0] / dense_fwd_bwd[0]:.2f}x dense (assignments per expert {ref_counts})"),
        ("PatchConvMoE unfold-split fwd+bwd", unf_fwd_bwd,
         f"{unf_fwd_bwd[0] / dense_fwd_bwd[0]:.2f}x dense (assignments per expert {unf_counts})"),
    ]
    for name, (median, best), note in rows:
        print(f"  {name:<34} {median:>10.3f} {best:>10.3f}  {note}")

    keyed = [("layer_fwd", ref_fwd), ("layer_fwd_bwd", ref_fwd_bwd), ("dense_fwd", dense_fwd),
             ("dense_fwd_bwd", dense_fwd_bwd), ("unfold_layer_fwd", unf_fwd),
             ("unfold_layer_fwd_bwd", unf_fwd_bwd)]
    summary = f"shape={args.shape} batch={batch} threads={torch.get_num_threads()}"
    summary += "".join(f" {key}_ms={median:.3f}" for key, (median, _) in keyed)
    summary += "".join(f" {key}_best_ms={best:.3f}" for key, (_, best) in keyed)

    if args.ours:
        ours = parse_summary(args.ours)
        torch_times = parse_summary(summary)
        print("\n  ours / PyTorch (< 1: ours faster)      median      best")
        pairs = [("layer_fwd", "layer_fwd", "layer fwd vs reference"),
                 ("layer_fwd", "unfold_layer_fwd", "layer fwd vs unfold-split"),
                 ("layer_fwd_bwd", "layer_fwd_bwd", "layer fwd+bwd vs reference"),
                 ("layer_fwd_bwd", "unfold_layer_fwd_bwd", "layer fwd+bwd vs unfold-split"),
                 ("dense_fwd", "dense_fwd", "dense conv fwd"),
                 ("dense_fwd_bwd", "dense_fwd_bwd", "dense conv fwd+bwd")]
        for ours_key, torch_key, label in pairs:
            ratios = []
            for suffix in ("_ms", "_best_ms"):
                if ours_key + suffix in ours:
                    ratio = float(ours[ours_key + suffix]) / float(torch_times[torch_key + suffix])
                    ratios.append(f"{ratio:8.2f}x")
            print(f"  {label:<34} {'  '.join(ratios)}")
        if ours.get("shape") != args.shape or ours.get("batch") != str(batch):
            print(f"  warning: the Rust line is for shape={ours.get('shape')} "
                  f"batch={ours.get('batch')}, not {args.shape} batch={batch}")
    print()
    print(summary)


if __name__ == "__main__":
    main()
