"""Full training steps of a segmentation network in PyTorch eager: the counterpart of
`moeseg bench train`.

One step = forward, cross-entropy (ignore 255) plus auxiliary heads and the PatchConvMoE
balancing losses, backward, SGD (lr 0.02, momentum 0.9, weight decay 1e-4). Random N(0, 1)
images and uniform random labels, `--warmup` untimed steps, then the median of `--steps` timed
steps; torch.set_num_threads(number of cores), as rayon uses one thread per core.

The network comes from the PyTorch definitions the Rust networks are checked against
(`scripts/fixtures/enet.py`, `nets_a.py`: ENet, ERFNet, U-Net), else from torchvision where it
has the model (lraspp). `--moe default|PATHS`
replaces convs by the reference PatchConvMoE of `scripts/fixtures/moe.py` (E=8, k=2, 3x3 grid,
2conv_gap, entropy), as the Rust bench does.

    cargo run --release -- bench train --model enet --moe default --batch 4 --size 256x512 --steps 10
    python3 scripts/bench_train_torch.py --model enet --moe default --batch 4 --size 256x512 --steps 10

Both print the same last line: `train_step_ms=<median> images_per_s=<batch / median>`.
"""

import argparse
import importlib
import inspect
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures.moe import PatchConvMoE  # noqa: E402

# The default PatchConvMoE placement of each network (moe.md / networks.md).
DEFAULT_MOE_PATH = {
    "enet": "regular5_1.ext_conv2.0",
    "erfnet": "decoder.layers.5.conv1x3_2",
    "unet": "up4.conv.double_conv.3",
    "lraspp": "classifier.high_classifier",
    "deeplabv3plus": "decoder.last_conv.4",
    "pspnet": "cls.4",
}


def build_network(name, classes):
    """The fixtures' PyTorch definition of `name` (a class of that name, case-insensitive, taking
    `num_classes`, in fixtures/<name>.py, nets_a.py or nets_b.py), else torchvision's."""
    for module_name in (name, "nets_a", "nets_b"):
        try:
            module = importlib.import_module(f"fixtures.{module_name}")
        except ImportError:
            continue
        for class_name, cls in inspect.getmembers(module, inspect.isclass):
            if (class_name.lower() == name and issubclass(cls, nn.Module)
                    and "num_classes" in inspect.signature(cls).parameters):
                return cls(num_classes=classes)
    if name == "lraspp":
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes)
    sys.exit(f"no full-size PyTorch definition of {name} in scripts/fixtures (nor torchvision)")


class MoeInPlace(nn.Module):
    """The reference PatchConvMoE in place of a conv: returns y, keeps its balancing loss."""

    def __init__(self, conv):
        super().__init__()
        k = conv.kernel_size[0]
        self.moe = PatchConvMoE(conv.in_channels, conv.out_channels, k, dilation=conv.dilation[0],
                                groups=conv.groups, bias=conv.bias is not None, experts=8, k=2,
                                grid=3, gate="2conv_gap", balance="entropy")
        self.loss = None

    def forward(self, x):
        y, self.loss = self.moe(x)
        return y


def place_moe(net, path):
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    conv = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    if not isinstance(conv, nn.Conv2d):
        sys.exit(f"{path} is a {type(conv).__name__}, not a Conv2d")
    layer = MoeInPlace(conv)
    if leaf.isdigit():
        parent[int(leaf)] = layer
    else:
        setattr(parent, leaf, layer)


def outputs(result):
    """(main logits, [(aux logits, weight)]) from the network's forward result."""
    if isinstance(result, dict):  # torchvision: {"out": ..., "aux": ...}
        aux = [(result["aux"], 0.4)] if "aux" in result else []
        return result["out"], aux
    if isinstance(result, (tuple, list)):
        return result[0], [(r, 0.4) for r in result[1:]]
    return result, []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(DEFAULT_MOE_PATH))
    parser.add_argument("--moe", default="none", help="default, comma-separated conv paths, or none")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", default="256x512", help="HxW")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    net = build_network(args.model, args.classes)
    if args.moe != "none":
        paths = [DEFAULT_MOE_PATH[args.model]] if args.moe == "default" else args.moe.split(",")
        for path in paths:
            place_moe(net, path.strip())
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(args.batch, 3, height, width)
    labels = torch.randint(0, args.classes, (args.batch, height, width))
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        logits, aux = outputs(net(images))
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        for head, weight in aux:
            loss = loss + weight * F.cross_entropy(head, labels, ignore_index=255)
        for m in net.modules():
            if isinstance(m, MoeInPlace) and m.loss is not None:
                loss = loss + m.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ms = (time.perf_counter() - start) * 1e3
        if step >= args.warmup:
            times.append(ms)
    median = statistics.median(times)
    print(f"{args.model} (moe: {args.moe}) batch {args.batch} at {height}x{width}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads: {args.steps} timed steps, "
          f"median {median:.1f} ms, best {min(times):.1f} ms")
    print(f"train_step_ms={median:.1f} images_per_s={args.batch * 1e3 / median:.1f}")


if __name__ == "__main__":
    main()
