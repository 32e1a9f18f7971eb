"""Memory a config's networks need per GPU: model state by world size, the largest unit FSDP
gathers, and the activations each phase saves for backward per image, for any family.

Counted, not timed: the networks are built on the meta device (no memory, any size), parameter
counts give the state (fp32 weights 4 B + gradients 4 B + Adam moments 8 B per parameter of a
trained network, 4 B per parameter of an averaged copy), and each phase of the family's step
runs its loss once on a micro-batch of one image per stream, with a saved-tensors hook summing the
bytes autograd keeps for backward (bf16: 2 B per element). The fused ops run their plain
reference twin (``model.ops_impl=ref``) on the meta device, which saves the upsampled input that
the fused op does not: the activation figures are upper bounds. The units FSDP gathers one at a
time are the FSDP strategy's (``named_units``) and each network's remaining root parameters,
gathered in ``parallel.param_dtype``.

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
from scalegan.parallel.base import named_units

GIB = 2 ** 30


class MetaServices:
    """The trainer's services on the meta device: draws are made on the CPU, then moved."""

    rank, world = 0, 1
    device = torch.device("meta")

    def __init__(self):
        self.rng = torch.Generator().manual_seed(0)
        self.nets: dict[str, torch.nn.Module] = {}

    def draw(self, fn, n: int, *shape: int) -> torch.Tensor:
        return fn(n, *shape, generator=self.rng).to("meta")

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def augment(self, images: torch.Tensor, draw=None) -> torch.Tensor:
        return images  # augment.kind=none

    def observe_real(self, logits: torch.Tensor) -> None:
        pass

    def autocast(self):
        return contextlib.nullcontext()


def one_image_batches(family, cfg, device: str = "meta") -> dict[str, Batch]:
    """One sample (zeros) of each of the family's streams, on ``device``."""
    mc, out = cfg.model, {}
    for name, spec in family.streams().items():
        labels = None
        if spec.points is not None:
            images = torch.zeros(1, 2, device=device)
        else:
            sizes = [mc.resolution >> k for k in reversed(range(spec.pyramid))]
            scales = [torch.zeros(1, mc.img_channels, r, r, device=device) for r in sizes]
            images = scales if spec.pyramid > 1 else scales[0]
        condition = spec.check.get("condition", "none")
        if condition == "label":
            labels = torch.zeros(1, dtype=torch.int64, device=device)
        elif condition == "embedding":
            labels = torch.zeros(1, spec.check["embedding_dim"], device=device)
        out[name] = Batch(images, [], labels)
    return out


def fsdp_units(name: str, net: torch.nn.Module) -> list[tuple[str, int]]:
    """``(unit, parameters)`` for each unit FSDP gathers at a time in network ``name``: its
    units (as the FSDP strategy shards them) and the root's remaining parameters
    (``"<name> (root)"``; ``name`` alone: the whole network when it has no units)."""
    out, inside = [], set()
    for key, unit in named_units(net):
        params = [p for p in unit.parameters() if id(p) not in inside]
        inside.update(id(p) for p in params)
        out.append((f"{name}.{key}", sum(p.numel() for p in params)))
    rest = sum(p.numel() for p in net.parameters() if id(p) not in inside)
    if rest or not out:
        out.append((f"{name} (root)" if out else name, rest))
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


def meta_networks(cfg) -> tuple[object, dict[str, torch.nn.Module]]:
    """The family of ``cfg`` on :class:`MetaServices` and its networks built on the meta device,
    with the fused ops' reference twins (``model.ops_impl=ref``, where the family has it)."""
    if any(f.name == "ops_impl" for f in dataclasses.fields(cfg.model)):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ops_impl="ref"))
    family = build_family(cfg, MetaServices())
    with torch.device("meta"):
        nets = family.build_networks()
    family.svc.nets = nets
    return family, nets


def parameter_counts(nets: dict[str, torch.nn.Module]) -> dict[str, int]:
    """Parameters of each network (shared tensors once)."""
    return {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}


def phase_activations(family, nets: dict[str, torch.nn.Module]
                      ) -> list[tuple[str, str, int | str]]:
    """Per phase of the family's step at the end of the run: ``(phase, networks trained, bytes
    saved for backward)`` for a micro-batch of one image per stream, on the device of
    ``family.svc`` (the bytes as a reason, "n/a (...)", when the phase cannot run there)."""
    cfg = family.cfg
    stage = family.stage(int(cfg.train.total_kimg * 1000))
    batches = one_image_batches(family, cfg, family.svc.device.type)
    mb = family.micro_batch(batches, family.svc)
    out = []
    for spec in family.phases():
        for name, net in nets.items():
            net.requires_grad_(name in spec.trains)
        try:
            saved, _ = saved_bytes(lambda spec=spec: spec.loss(nets, mb, stage))
            out.append((spec.name, "+".join(spec.trains), saved))
        except (RuntimeError, NotImplementedError) as e:  # an op without a meta kernel
            out.append((spec.name, "+".join(spec.trains),
                        f"n/a ({str(e).splitlines()[0][:60]})"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--worlds", default="1,8,16")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    family, nets = meta_networks(cfg)
    cfg = family.cfg
    counts = parameter_counts(nets)
    ema = sum(counts[name] for name in family.ema)
    largest = max((u for name, net in nets.items() for u in fsdp_units(name, net)),
                  key=lambda u: u[1])

    phases = [(name, trains, size if isinstance(size, str) else f"{size / GIB:.3f} GiB")
              for name, trains, size in phase_activations(family, nets)]

    total = sum(counts.values())
    print(f"{args.config}: model {cfg.model.arch} {cfg.model.resolution}^2, "
          + ", ".join(f"{n} {c / 1e6:.1f}M" for n, c in counts.items()) + " parameters")
    print(f"| GPUs | networks' state (16 B/param), sharded | averaged copies "
          f"({', '.join(family.ema)}; 4 B/param) |")
    print("|---|---|---|")
    for w in (int(x) for x in args.worlds.split(",")):
        print(f"| {w} | {total * 16 / w / 1e9:.2f} GB | {ema * 4 / w / 1e9:.2f} GB |")
    gathered = cfg.parallel.param_dtype  # FSDP all-gathers a unit in its param_dtype
    print(f"largest unit gathered at a time: {largest[0]}, {largest[1] / 1e6:.1f}M parameters, "
          f"{largest[1] * (2 if gathered == 'bf16' else 4) / 1e9:.2f} GB in {gathered}")
    print("activations saved per image for backward, bf16 (upper bound), per phase: "
          + "; ".join(f"{name} (trains {trains}) {size}" for name, trains, size in phases))


if __name__ == "__main__":
    main()
