#!/usr/bin/env python3
"""Checks the nets_a references (scripts/fixtures/nets_a.py, tests/fixtures/nets_a.safetensors,
tests/manifests/{erfnet,unet,lraspp}.tsv) against the upstream sources themselves.

    python3 scripts/check_nets_a_upstream.py --erfnet PATH/erfnet_pytorch/train/erfnet.py \
        --unet PATH/Pytorch-UNet/unet

The upstream files are not part of this repository: pass a checkout of each (the commits
checked are recorded in the header of scripts/fixtures/nets_a.py). LR-ASPP and its blocks are
torchvision's own (the installed package). Three checks, every one against the upstream modules:

1. structure: every leaf module of the reference (name, class and its repr: kernel, stride,
   padding, dilation, groups, bias, output_padding, BN eps / momentum, dropout p) and every
   state-dict entry (key, shape, dtype, order) equals the upstream's;
2. fixtures: the upstream modules, given each case's stored weights (`<case>.sd.*` and the
   pool windows `<case>.expand.*`), reproduce the stored outputs (and, for the train cases,
   gradients and running statistics);
3. manifests: the upstream state dicts (num_classes = 19) equal tests/manifests/<net>.tsv.

Exits non-zero on any difference.
"""

import argparse
import importlib.util
import pathlib
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
from torchvision.models.segmentation import lraspp_mobilenet_v3_large
from torchvision.models.segmentation.lraspp import LRASPPHead

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from fixtures import nets_a  # noqa: E402

FAILURES = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_unet(package_dir):
    """Imports the upstream `unet` package (unet_model.py imports `.unet_parts`)."""
    package_dir = pathlib.Path(package_dir)
    spec = importlib.util.spec_from_file_location(
        "upstream_unet", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["upstream_unet"] = package
    spec.loader.exec_module(package)
    parts = sys.modules["upstream_unet.unet_parts"]
    return package.UNet, parts


# ---- 1. structure -----------------------------------------------------------------------


def leaves(model):
    return [(name, repr(m)) for name, m in model.named_modules() if not list(m.children())]


def entries(model):
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


def same_structure(what, reference, upstream):
    ref_leaves, up_leaves = leaves(reference), leaves(upstream)
    ok = ref_leaves == up_leaves
    if not ok:
        for a, b in zip(ref_leaves, up_leaves):
            if a != b:
                print(f"    first leaf difference: reference {a} / upstream {b}")
                break
        print(f"    {len(ref_leaves)} reference leaves, {len(up_leaves)} upstream leaves")
    check(ok, f"{what}: {len(up_leaves)} leaf modules (name, class, options)")
    check(entries(reference) == entries(upstream), f"{what}: state dict (keys, shapes, dtypes, order)")


# ---- 2. fixtures ------------------------------------------------------------------------


@torch.no_grad()
def load_case(model, fx, case):
    pool = fx["pool"].float() if "pool" in fx else None
    state = {}
    for key, value in model.state_dict().items():
        if f"{case}.sd.{key}" in fx:
            state[key] = fx[f"{case}.sd.{key}"].to(value.dtype)
        else:
            offset, scale = fx[f"{case}.expand.{key}"].tolist()
            index = (int(offset) + torch.arange(value.numel())) % pool.numel()
            state[key] = (pool[index] * torch.tensor(scale, dtype=torch.float32)).reshape(value.shape)
    model.load_state_dict(state, strict=True)


def compare(what, actual, expected):
    diff = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    check(actual.shape == expected.shape and diff <= 1e-6 * max(scale, 1.0),
          f"{what}: max |upstream - fixture| = {diff:.1e} (max |fixture| {scale:.1e})")


@torch.no_grad()
def replay_eval(fx, case, model, call=None):
    load_case(model, fx, case)
    model.eval()
    inputs = {k.split(".", 1)[1]: fx[k].float() for k in fx
              if k.split(".", 1)[0] == case and k.split(".", 1)[1] in ("input", "skip", "low", "high")}
    out = call(model, inputs) if call else model(*inputs.values())
    compare(f"{case}.out", out, fx[f"{case}.out"])
    return model, inputs


def replay_train(fx, case, model):
    load_case(model, fx, case)
    model.train()
    x = fx[f"{case}.input"].float().clone().requires_grad_(True)
    y = model(x)
    (y * fx[f"{case}.grad_out"]).sum().backward()
    compare(f"{case}.out", y.detach(), fx[f"{case}.out"])
    compare(f"{case}.grad_input", x.grad, fx[f"{case}.grad_input"])
    for key, p in model.named_parameters():
        compare(f"{case}.grad.{key}", p.grad, fx[f"{case}.grad.{key}"])
    for key, value in model.state_dict().items():
        if "running" in key:
            compare(f"{case}.after.{key}", value, fx[f"{case}.after.{key}"])


# ---- 3. manifests -----------------------------------------------------------------------


def same_manifest(net, model):
    path = ROOT / "tests" / "manifests" / f"{net}.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    dtype = {torch.float32: "float32", torch.int64: "int64"}
    mine = [[k, "[" + ",".join(map(str, v.shape)) + "]", dtype[v.dtype]] for k, v in model.state_dict().items()]
    check(rows == mine, f"tests/manifests/{net}.tsv: {len(rows)} entries equal the upstream state dict")


# ---- main -------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--erfnet", required=True, help="erfnet_pytorch's train/erfnet.py")
    parser.add_argument("--unet", required=True, help="Pytorch-UNet's unet/ package folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    erf = load_module("upstream_erfnet", args.erfnet)
    UNet, unet_parts = load_unet(args.unet)
    fx = load_file(str(ROOT / "tests" / "fixtures" / "nets_a.safetensors"))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")

    print("ERFNet")
    same_structure("ERFNet(4)", nets_a.ERFNet(4), erf.Net(4))
    same_structure("DownsamplerBlock(16, 64)", nets_a.DownsamplerBlock(16, 64), erf.DownsamplerBlock(16, 64))
    same_structure("non_bottleneck_1d(32, 0.3, 4)", nets_a.NonBottleneck1d(32, 0.3, 4), erf.non_bottleneck_1d(32, 0.3, 4))
    same_structure("UpsamplerBlock(64, 16)", nets_a.UpsamplerBlock(64, 16), erf.UpsamplerBlock(64, 16))
    replay_eval(fx, "erf_down", erf.DownsamplerBlock(16, 64))
    replay_eval(fx, "erf_nb1d", erf.non_bottleneck_1d(32, 0.3, 4))
    replay_eval(fx, "erf_nb1d_d16", erf.non_bottleneck_1d(16, 0.3, 16))
    replay_eval(fx, "erf_up", erf.UpsamplerBlock(64, 16))
    replay_train(fx, "erf_nb1d_train", erf.non_bottleneck_1d(32, 0, 2))
    replay_train(fx, "erf_down_train", erf.DownsamplerBlock(16, 32))
    net, inputs = replay_eval(fx, "erfnet", erf.Net(4))
    with torch.no_grad():
        compare("erfnet.encoder_out (forward(only_encode=True))", net(inputs["input"], only_encode=True),
                fx["erfnet.encoder_out"])
    same_manifest("erfnet", erf.Net(19))

    print("U-Net (bilinear=False)")
    same_structure("UNet(3, 3)", nets_a.UNet(3), UNet(3, 3, bilinear=False))
    same_structure("Up(64, 32)", nets_a.Up(64, 32), unet_parts.Up(64, 32, bilinear=False))
    replay_eval(fx, "unet_up", unet_parts.Up(64, 32, bilinear=False))
    replay_eval(fx, "unet_inc_down", nn.Sequential(unet_parts.DoubleConv(3, 16), unet_parts.Down(16, 32)))
    replay_eval(fx, "unet", UNet(3, 3, bilinear=False))
    same_manifest("unet", UNet(3, 19, bilinear=False))

    print("LR-ASPP (torchvision)")

    def block(*row):
        return MobileNetV3([InvertedResidualConfig(*row, 1.0)], last_channel=8).features[1]

    replay_eval(fx, "mnv3_noexpand", block(16, 3, 16, 16, False, "RE", 1, 1))
    replay_eval(fx, "mnv3_se_s2", block(16, 5, 48, 24, True, "RE", 2, 1))
    replay_eval(fx, "mnv3_dilated", block(24, 5, 72, 24, True, "HS", 1, 2))
    replay_eval(fx, "lraspp_head", LRASPPHead(24, 96, 4, 32), call=lambda m, named: m(named))
    lraspp = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    replay_eval(fx, "lraspp", lraspp, call=lambda m, named: m(named["input"])["out"])
    same_manifest("lraspp", lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19))

    print(f"{len(FAILURES)} difference(s)" if FAILURES else "no difference")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
