"""Memory a config's networks need per GPU: model state by world size, the largest unit FSDP
gathers, and the activations each phase saves for backward per image, for any family.

Counted, not timed: the networks are built on the meta device (no memory, any size), parameter
counts give the state (fp32 weights 4 B + gradients 4 B + Adam moments 8 B per parameter of a
trained network, 4 B per parameter of an averaged copy), and each phase of the family's step
runs its loss once on a micro-batch of one image per stream, with a saved-tensors hook summing the
bytes autograd keeps for backward (bf16: 2 B per element). The fused ops run their plain
reference twin (``model.ops_impl=ref``) on the meta device, which saves the upsampled input that
the fused op does not: the activation figures are upper bounds.

    python benchmarks/model_memory.py configs/ffhq1024_stackgan_fsdp.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

import torch

from scalegan.config import load_config
from scalegan.data.pipeline import Batch
from scalegan.families import build_family

GIB = 2 ** 30


class MetaServices:
    """The trainer's services on the meta device: draws are made on the CPU, then moved."""

    rank, world = 0, 1
    device = torch.device("meta")

    def __init__(self):
        self.rng = torch.Generator().manual_seed(0)

    def draw(self, fn, n: int, *shape: int) -> torch.Tensor:
        return fn(n, *shape, generator=self.rng).to("meta")

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def autocast(self):
        return contextlib.nullcontext()


def one_image_batches(family, cfg) -> dict[str, Batch]:
    """One sample of each of the family's streams, on the meta device."""
    mc, out = cfg.model, {}
    for name, spec in family.streams().items():
        labels = None
        if spec.points is not None:
            images = torch.zeros(1, 2, device="meta")
        else:
            sizes = [mc.resolution >> k for k in reversed(range(spec.pyramid))]
            scales = [torch.zeros(1, mc.img_channels, r, r, device="meta") for r in sizes]
            images = scales if spec.pyramid > 1 else scales[0]
        condition = spec.check.get("condition", "none")
        if condition == "label":
            labels = torch.zeros(1, dtype=torch.int64, device="meta")
        elif condition == "embedding":
            labels = torch.zeros(1, spec.check["embedding_dim"], device="meta")
        out[name] = Batch(images, [], labels)
    return out


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
    cfg = load_config(args.config, args.overrides)
    if any(f.name == "ops_impl" for f in dataclasses.fields(cfg.model)):
        cfg = load_config(args.config, args.overrides + ["model.ops_impl=ref"])
    family = build_family(cfg, MetaServices())
    with torch.device("meta"):
        nets = family.build_networks()
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    ema = sum(counts[name] for name in family.ema)
    units = [(f"{name}.{key}.{k}", sum(p.numel() for p in u.parameters()))
             for name, m in nets.items() for key, child in m.named_children()
             if isinstance(child, torch.nn.ModuleDict) for k, u in child.items()]
    units += [(name, n) for name, n in counts.items()
              if not any(u.startswith(f"{name}.") for u, _ in units)]
    largest = max(units, key=lambda u: u[1])

    stage = family.stage(int(cfg.train.total_kimg * 1000))  # the stage at the end of the run
    mb = family.micro_batch(one_image_batches(family, cfg), family.svc)
    phases = []
    for spec in family.phases():
        for name, net in nets.items():
            net.requires_grad_(name in spec.trains)
        try:
            saved, _ = saved_bytes(lambda spec=spec: spec.loss(nets, mb, stage))
            phases.append((spec.name, "+".join(spec.trains), f"{saved / GIB:.3f} GiB"))
        except (RuntimeError, NotImplementedError) as e:  # an op without a meta kernel
            phases.append((spec.name, "+".join(spec.trains),
                           f"n/a ({str(e).splitlines()[0][:60]})"))

    total = sum(counts.values())
    print(f"{args.config}: model {cfg.model.arch} {cfg.model.resolution}^2, "
          + ", ".join(f"{n} {c / 1e6:.1f}M" for n, c in counts.items()) + " parameters")
    print(f"| GPUs | networks' state (16 B/param), sharded | averaged copies "
          f"({', '.join(family.ema)}; 4 B/param) |")
    print("|---|---|---|")
    for w in (int(x) for x in args.worlds.split(",")):
        print(f"| {w} | {total * 16 / w / 1e9:.2f} GB | {ema * 4 / w / 1e9:.2f} GB |")
    print(f"largest unit gathered at a time: {largest[0]}, {largest[1] / 1e6:.1f}M parameters, "
          f"{largest[1] * 2 / 1e9:.2f} GB in bf16")
    print("activations saved per image for backward, bf16 (upper bound), per phase: "
          + "; ".join(f"{name} (trains {trains}) {size}" for name, trains, size in phases))


if __name__ == "__main__":
    main()
