#!/usr/bin/env python3
"""Times the six networks in PyTorch eager on the CPU, as `moeseg bench nets` does in Rust.

    pip install torch torchvision
    python3 scripts/bench_nets_torch.py [--model enet ...] [--batch 2] [--size 256x512] [--repeats 3]

Same protocol as `moeseg bench nets`: forward in eval mode under no_grad, and forward + backward
in train mode (pixel-wise cross-entropy, ignore index 255, on a fixed target), each the median
of `--repeats` runs after one warm-up run, with as many threads as the machine has cores. It
prints `bench_nets model=NAME forward_ms=... train_ms=...` lines with the same keys.

The networks come from the fixtures scripts' PyTorch definitions (ENet, ERFNet, U-Net), from
torchvision (LR-ASPP) and, for DeepLabv3+ and PSPNet, from torchvision's ResNet-50 with the
fixtures' ASPP / decoder / PPM heads. (DeepLabv3+'s layer4 uses torchvision's uniform dilation
2 instead of the multi-grid 2/4/8: the same MACs and memory traffic.)
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


class DeepLabV3Plus(nn.Module):
    def __init__(self, classes):
        super().__init__()
        from torchvision.models import resnet50
        from fixtures.nets_b import Aspp, Decoder

        self.backbone = resnet50(replace_stride_with_dilation=[False, False, True])
        self.aspp = Aspp(2048, 256, (6, 12, 18))
        self.decoder = Decoder(256, 48, 256, 256, classes)

    def forward(self, x):
        b = self.backbone
        y = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        low = b.layer1(y)
        y = b.layer4(b.layer3(b.layer2(low)))
        y = self.decoder(self.aspp(y), low)
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=True)


class PSPNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        from torchvision.models import resnet50
        from fixtures.nets_b import Ppm, psp_head

        self.backbone = resnet50(replace_stride_with_dilation=[False, True, True])
        self.ppm = Ppm(2048, 512, (1, 2, 3, 6))
        self.cls = psp_head(4096, 512, classes)
        self.aux = psp_head(1024, 256, classes)

    def forward(self, x):
        b = self.backbone
        y = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
        mid = b.layer3(y)
        out = self.cls(self.ppm(b.layer4(mid)))
        out = F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=True)
        if self.training:
            aux = F.interpolate(self.aux(mid), size=x.shape[2:], mode="bilinear", align_corners=True)
            return out, aux
        return out


class LRASPP(nn.Module):
    def __init__(self, classes):
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=classes)

    def forward(self, x):
        return self.net(x)["out"]


def build(name, classes=19):
    if name == "enet":
        from fixtures.enet import ENet

        return ENet(classes)
    if name == "erfnet":
        from fixtures.nets_a import ERFNet

        return ERFNet(classes)
    if name == "unet":
        from fixtures.nets_a import UNet

        return UNet(classes)
    if name == "lraspp":
        return LRASPP(classes)
    if name == "deeplabv3plus":
        return DeepLabV3Plus(classes)
    if name == "pspnet":
        return PSPNet(classes)
    raise SystemExit(f"unknown network {name}")


def median_ms(repeats, run):
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", dest="models")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(7)
    x = torch.randn(args.batch, 3, h, w)
    index = torch.arange(args.batch * h * w)
    target = torch.where(index % 97 == 0, torch.tensor(255), index % 19).reshape(args.batch, h, w)
    models = args.models or ["enet", "erfnet", "unet", "lraspp", "deeplabv3plus", "pspnet"]
    print(f"torch {torch.__version__} bench nets: batch {args.batch}, 3x{h}x{w}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} runs")
    for name in models:
        net = build(name)
        net.eval()

        def forward():
            with torch.no_grad():
                net(x)

        forward_ms = median_ms(args.repeats, forward)
        train_text = "-"
        if not args.forward_only:
            net.train()

            def train():
                out = net(x)
                if isinstance(out, tuple):
                    loss = F.cross_entropy(out[0], target, ignore_index=255)
                    loss = loss + 0.4 * F.cross_entropy(out[1], target, ignore_index=255)
                else:
                    loss = F.cross_entropy(out, target, ignore_index=255)
                loss.backward()
                net.zero_grad(set_to_none=True)

            train_text = f"{median_ms(args.repeats, train):.1f}"
        print(f"bench_nets model={name} forward_ms={forward_ms:.1f} train_ms={train_text}", flush=True)


if __name__ == "__main__":
    main()
