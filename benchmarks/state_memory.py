"""Per-rank bytes of G's parameters + gradients + Adam state, at world sizes 1, 2, 4.

Measured, not computed: each rank builds a CPU-feasible copy of the generator of
configs/ffhq1024_pggan_fsdp.yaml (the same channel schedule divided by --width-divisor, grown to
--resolution instead of 1024), wraps it with the strategy and trains G at the final resolution
(alpha 0.5, so every block is active) in fp32: one step, then a second forward/backward. Between
that backward and its optimizer step, the peak of the step, it sums the storage bytes of the
tensors the rank holds: parameters (a DTensor's local shard, a ZeRO-3 parameter's partition),
their gradients, and everything the optimizer holds (DeepSpeed: fp32 master partitions, gradient
partitions, Adam moments). DeepSpeed's communication buckets are set to 100k elements
(``reduce_bucket_size``, ``allgather_bucket_size``, ``stage3_prefetch_bucket_size``): they are
transient buffers whose size is a config choice.
Printed as a ratio to world size 1, which trains the plain, unsharded module.

    python benchmarks/state_memory.py [--width-divisor 16] [--resolution 64]
        [--strategies ddp,fsdp,deepspeed-1,deepspeed-2,deepspeed-3]
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
from scalegan.parallel import build_strategy, unit_param_groups  # noqa: E402
from scalegan.parallel.env import init_distributed, shutdown  # noqa: E402
from scalegan.train.trainer import init_optimizer_state  # noqa: E402

from parallel.spawn import free_port  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ffhq1024_pggan_fsdp.yaml"


def _held_bytes(*roots) -> int:
    """Bytes of the distinct storages of every tensor reachable from ``roots`` through tensors'
    ``grad`` / ``ds_tensor``, containers and the attributes of torch / DeepSpeed objects."""
    storages: dict[int, int] = {}
    seen: set[int] = set()

    def visit(obj, depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            for extra in (obj.grad, getattr(obj, "ds_tensor", None)):
                if extra is not None:
                    visit(extra, depth + 1)
            local = obj.to_local() if hasattr(obj, "to_local") else obj
            if local.device.type != "meta" and local.untyped_storage().nbytes():
                storage = local.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                visit(v, depth + 1)
        elif type(obj).__module__.split(".")[0] in ("deepspeed", "torch") and not isinstance(
                obj, (torch.nn.Module, torch.distributed.ProcessGroup)):
            for v in getattr(obj, "__dict__", {}).values():
                visit(v, depth + 1)

    for root in roots:
        visit(root, 0)
    return sum(storages.values())


def _measure(rank: int, world: int, port: int, strategy: str, divisor: int, resolution: int,
             out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    name, _, stage = strategy.partition("-")
    bucket = 100_000
    cfg = load_config(CONFIG, [
        f"parallel.strategy={name}", f"parallel.zero_stage={stage or 2}",
        *(f"parallel.deepspeed.zero_optimization.{key}={bucket}" for key in (
            "reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size")),
        f"model.channel_base={131072 // divisor}", f"model.channel_max={2560 // divisor}",
        "model.latent_dim=64", f"model.resolution={resolution}", f"train.batch_size={world}",
        "train.precision=fp32", "parallel.param_dtype=fp32", "parallel.reduce_dtype=fp32",
        "train.grad_accum=1"])
    env = init_distributed()
    torch.manual_seed(0)
    G, D = build_models(cfg.model)
    num_params = count_parameters(G)
    strat = build_strategy(cfg, env)
    strat.wrap(G, D)
    opt_G = torch.optim.Adam(unit_param_groups(G), lr=1e-3, betas=(0.0, 0.99))
    opt_D = torch.optim.Adam(unit_param_groups(D), lr=1e-3, betas=(0.0, 0.99))
    if strat.checkpoint_format == "dcp":
        init_optimizer_state(opt_G)
    strat.setup_optimizers(opt_G, opt_D)
    D.requires_grad_(False)
    G_train = strat.trainable("G")
    strat.zero_grad("G")
    strat.backward("G", G_train(torch.randn(1, cfg.model.latent_dim), resolution, 0.5).mean())
    strat.step("G")
    strat.zero_grad("G")
    loss = G_train(torch.randn(1, cfg.model.latent_dim), resolution, 0.5).mean()
    engine = getattr(strat, "engines", {}).get("G")
    if engine is not None:  # the strategy's backward also steps; here the step comes after
        engine.backward(loss)
    else:
        loss.backward()
    held = _held_bytes(list(G.parameters()), engine.optimizer if engine else opt_G.state)
    if engine is not None:
        engine.step()
    else:
        opt_G.step()
    if rank == 0:
        Path(out).write_text(f"{held} {num_params}")
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
    ap.add_argument("--strategies", default="ddp,fsdp,deepspeed-1,deepspeed-2,deepspeed-3")
    ap.add_argument("--worlds", default="1,2,4")
    args = ap.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    print(f"G of {CONFIG.name}, widths / {args.width_divisor}, grown to {args.resolution}^2; "
          f"bytes per rank "
          f"(params + grads + Adam state) as a ratio to world size 1")
    print(f"{'strategy':<12}" + "".join(f"{'W=' + str(w):>12}" for w in worlds) + "   W=1 MiB")
    for strategy in args.strategies.split(","):
        totals = {}
        for w in worlds:
            totals[w], n = measure(strategy, w, args.width_divisor, args.resolution)
        base = totals[worlds[0]]
        print(f"{strategy:<12}" + "".join(f"{totals[w] / base:>12.3f}" for w in worlds)
              + f"   {base / 2**20:8.1f}  ({n / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
