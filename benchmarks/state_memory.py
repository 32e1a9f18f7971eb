"""Per-rank bytes of G's parameters + gradients + Adam state, at world sizes 1, 2, 4.

Measured, not computed: each rank builds a CPU-feasible copy of the generator of
configs/ffhq1024_pggan_fsdp.yaml (the same channel schedule divided by --width-divisor, grown to
--resolution instead of 1024), wraps it with the strategy, runs one forward/backward at the final
resolution (alpha 0.5, so every block is active) and one Adam step, then sums the bytes of the
tensors it holds locally (a DTensor's local shard). Printed as a ratio to world size 1, which
trains the plain, unsharded module.

    python benchmarks/state_memory.py [--width-divisor 16] [--resolution 64] [--strategies ddp,fsdp]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scalegan.config import load_config  # noqa: E402
from scalegan.models import build_models, count_parameters  # noqa: E402
from scalegan.parallel import build_strategy  # noqa: E402
from scalegan.parallel.env import init_distributed, shutdown  # noqa: E402
from scalegan.train.trainer import init_adam_state  # noqa: E402

from parallel.spawn import free_port  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ffhq1024_pggan_fsdp.yaml"


def _local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def _measure(rank: int, world: int, port: int, strategy: str, divisor: int, resolution: int,
             out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_config(CONFIG, [f"parallel.strategy={strategy}",
                               f"model.channel_base={131072 // divisor}",
                               f"model.channel_max={2560 // divisor}", "model.latent_dim=64",
                               f"model.resolution={resolution}"])
    env = init_distributed()
    torch.manual_seed(0)
    G, D = build_models(cfg.model)
    strat = build_strategy(cfg.parallel, env)
    strat.wrap(G, D)
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    init_adam_state(opt)
    G_train = strat.trainable("G")
    G_train(torch.randn(1, cfg.model.latent_dim), resolution, 0.5).mean().backward()
    opt.step()
    params = sum(_local_bytes(p) for p in G.parameters())
    grads = sum(_local_bytes(p.grad) for p in G.parameters())
    state = sum(_local_bytes(v) for s in opt.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
    if rank == 0:
        Path(out).write_text(f"{params} {grads} {state} {count_parameters(G)}")
    shutdown(env)


def measure(strategy: str, world: int, divisor: int, resolution: int) -> tuple[int, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bytes")
        # world size 1 trains the plain modules: the unsharded baseline
        mp.spawn(_measure, args=(world, free_port(), strategy, divisor, resolution, out),
                 nprocs=world)
        return tuple(int(x) for x in Path(out).read_text().split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width-divisor", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--strategies", default="ddp,fsdp")
    ap.add_argument("--worlds", default="1,2,4")
    args = ap.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    print(f"G of {CONFIG.name}, widths / {args.width_divisor}, grown to {args.resolution}^2; "
          f"bytes per rank "
          f"(params + grads + Adam state) as a ratio to world size 1")
    print(f"{'strategy':<10}" + "".join(f"{'W=' + str(w):>12}" for w in worlds) + "   W=1 MiB")
    for strategy in args.strategies.split(","):
        totals = {}
        for w in worlds:
            p, g, s, n = measure(strategy, w, args.width_divisor, args.resolution)
            totals[w] = p + g + s
        base = totals[worlds[0]]
        print(f"{strategy:<10}" + "".join(f"{totals[w] / base:>12.3f}" for w in worlds)
              + f"   {base / 2**20:8.1f}  ({n / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
