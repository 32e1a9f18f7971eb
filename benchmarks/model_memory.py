"""Memory a config's models need per GPU: model state by world size, the largest unit FSDP gathers,
and the activations saved for backward per image.

Counted, not timed: the models are built on the meta device (no memory, any size), parameter
counts give the state (fp32 weights 4 B + gradients 4 B + Adam moments 8 B per parameter, G_ema
4 B per G parameter), and one forward of G and of D on one image, with a saved-tensors hook,
sums the bytes autograd keeps for backward (bf16: 2 B per element). The fused ops run their
plain reference twin (``model.ops_impl=ref``) on the meta device, which saves the upsampled input
that the fused op does not: the activation figure is an upper bound.

    python benchmarks/model_memory.py configs/ffhq1024_stackgan_fsdp.yaml [key=value ...]
"""

from __future__ import annotations

import argparse

import torch

from scalegan.config import load_config
from scalegan.models import build_models

GIB = 2 ** 30


def saved_bytes(fn, bytes_per_element: int = 2) -> tuple[int, object]:
    """Bytes of the tensors autograd saves while ``fn()`` runs, and its result."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * bytes_per_element
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--worlds", default="1,8,16")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides + ["model.ops_impl=ref"])
    mc = cfg.model
    with torch.device("meta"):
        G, D = build_models(mc)
    n_g = sum(p.numel() for p in G.parameters())
    n_d = sum(p.numel() for p in D.parameters())
    units = [(f"{name}.{key}.{k}", sum(p.numel() for p in u.parameters()))
             for name, m in (("G", G), ("D", D)) for key, child in m.named_children()
             if isinstance(child, torch.nn.ModuleDict) for k, u in child.items()]
    largest = max(units, key=lambda u: u[1])

    z = torch.randn(1, mc.latent_dim, device="meta")
    cond = None
    if mc.condition == "label":
        cond = torch.zeros(1, dtype=torch.int64, device="meta")
    elif mc.condition == "embedding":
        cond = torch.zeros(1, mc.embedding_dim, device="meta")
    if mc.arch == "stackgan":
        g_act, (images, _, _) = saved_bytes(lambda: G(z, cond))
        d_act, _ = saved_bytes(lambda: D(images, cond))
    else:
        g_act, images = saved_bytes(lambda: G(z, mc.resolution, 1.0))
        d_act, _ = saved_bytes(lambda: D(images, mc.resolution, 1.0))

    print(f"{args.config}: model {mc.arch} {mc.resolution}^2, G {n_g / 1e6:.1f}M, "
          f"D {n_d / 1e6:.1f}M parameters")
    print("| GPUs | G+D state (16 B/param), sharded | G_ema (4 B/param) |")
    print("|---|---|---|")
    for w in (int(x) for x in args.worlds.split(",")):
        print(f"| {w} | {(n_g + n_d) * 16 / w / 1e9:.2f} GB | {n_g * 4 / w / 1e9:.2f} GB |")
    print(f"largest unit gathered at a time: {largest[0]}, {largest[1] / 1e6:.1f}M parameters, "
          f"{largest[1] * 2 / 1e9:.2f} GB in bf16")
    print(f"activations saved per image, bf16 (upper bound): G {g_act / GIB:.2f} GiB, "
          f"D {d_act / GIB:.2f} GiB per call; G phase (G + D) {(g_act + d_act) / GIB:.2f} GiB")


if __name__ == "__main__":
    main()
