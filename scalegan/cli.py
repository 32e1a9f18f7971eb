"""`scalegan pack | train | generate | export | eval`: parse, load the config, call the
library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
"""Bad input: a config key, a file, a checkpoint, data that does not fit the run."""
EXIT_DIVERGED = 4
"""Training stopped because its losses or gradients stayed NaN or inf."""
EXIT_DISK_FULL = 5
"""A checkpoint could not be written for lack of space (the previous one is intact)."""


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"scalegan: error: {message}", file=sys.stderr)
    return code


def cmd_pack(args: argparse.Namespace) -> int:
    from scalegan.data.pack import PackError, pack_folder

    if args.jpeg_quality is not None and args.encoding != "jpeg":
        return _fail(f"--jpeg-quality {args.jpeg_quality} applies to --encoding jpeg only "
                     f"(got --encoding {args.encoding or 'auto'})")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    given = {"min_resolution": args.min_resolution, "encoding": args.encoding,
             "jpeg_quality": args.jpeg_quality, "workers": args.workers}
    # built-in sets keep their own defaults (one process) unless an option is given
    options = {k: v for k, v in given.items() if v is not None}
    try:
        from scalegan.data.demo import DEMO_SETS

        if args.src in DEMO_SETS:
            if args.holdout is not None:
                return _fail(f"--holdout applies to an image folder or 'demo'; {args.src} "
                             f"has its own held-out part")
            fn, default = DEMO_SETS[args.src]
            summaries = fn(args.out, resolution=args.resolution or default,
                           **({} if args.shard_size is None else {"shard_size": args.shard_size}),
                           progress=progress, **options)
            for part, summary in summaries.items():
                print(f"{part}: {summary.to_text()}")
            return 0
        if args.src == "demo":
            from scalegan.data.demo import pack_demo

            summary = pack_demo(args.out, resolution=args.resolution or 32,
                                shard_size=25 if args.shard_size is None else args.shard_size,
                                holdout=args.holdout, progress=progress, **options)
        else:
            if args.resolution is None:
                return _fail("--resolution is required (e.g. --resolution 256)")
            summary = pack_folder(args.src, args.out, args.resolution,
                                  shard_size=1000 if args.shard_size is None else args.shard_size,
                                  fit=args.fit, labels=args.labels, holdout=args.holdout,
                                  progress=progress, **options)
    except PackError as e:
        return _fail(str(e))
    print(summary.to_text())
    return 0


def _describe_models(cfg) -> str:
    from scalegan.families import build_family

    family = build_family(cfg)
    return family.describe(family.build_networks())


def cmd_train(args: argparse.Namespace) -> int:
    from scalegan.config import ConfigError, load_config
    from scalegan.data.pipeline import DataError, check_pack, expand_shards

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return _fail(str(e))
    if args.dry_run:
        print(_describe_models(cfg))
        return 0
    try:
        from scalegan.families import build_family

        mc = cfg.model
        # what the data says must fit the model: before any step
        for spec in build_family(cfg).streams().values():
            if spec.points is None:
                expand_shards(spec.shards, key=spec.key,
                              allow_unindexed=cfg.data.allow_unindexed)
                check_pack(spec.shards, mc.resolution, img_channels=mc.img_channels,
                           key=spec.key, **spec.check)
        if cfg.data.source == "shards":
            if cfg.eval.every_kimg > 0 and cfg.eval.real:
                expand_shards(cfg.eval.real, key="eval.real",
                              allow_unindexed=cfg.data.allow_unindexed)
                check_pack(cfg.eval.real, mc.resolution, img_channels=mc.img_channels,
                           key="eval.real")
    except DataError as e:
        return _fail(str(e))

    from scalegan.parallel.env import init_distributed, shutdown
    from scalegan.train.preemption import EXIT_INTERRUPTED, EXIT_REQUEUE, StopSignal

    # from here on a stop signal is recorded, not fatal: one during set-up stops the run before
    # its first step
    with StopSignal() as stop:
        env = init_distributed()
        try:
            status = _train(cfg, args, env, stop)
        except BaseException:  # this rank alone: the others may wait in a collective
            shutdown(env, barrier=False)
            raise
        shutdown(env)
    # Everything is written and the process group is gone; a distributed rank then leaves without
    # the interpreter's teardown, where the collectives' threads occasionally abort the process
    # ("terminate called without an active exception", exit 134 instead of 3: no requeue).
    args.exit_at_once = env.distributed
    if isinstance(status, int):
        return status
    if status in ("preempted", "interrupted"):
        code = EXIT_REQUEUE if status == "preempted" else EXIT_INTERRUPTED
        if env.is_main:
            why = "asks the launcher to requeue" if code == EXIT_REQUEUE else "after Ctrl-C"
            latest = cfg.run_dir / "checkpoints" / "latest"
            where = f"checkpoint {latest}" if latest.exists() else "no checkpoint yet"
            print(f"stopped by a signal; {where}; exit {code} {why}", file=sys.stderr)
        return code
    if not env.is_main:
        return 0
    run = cfg.run_dir
    print(f"run directory : {run}")
    print(f"sample grid   : {run / 'samples' / 'latest.png'}")
    print(f"metrics       : {run / 'metrics.jsonl'}")
    print(f"checkpoint    : {run / 'checkpoints' / 'latest'}")
    wandb_runs = sorted((run / "wandb").glob("*run-*")) if (run / "wandb").is_dir() else []
    if wandb_runs:
        print(f"W&B run       : {wandb_runs[-1]}")
    return 0


def _train(cfg, args: argparse.Namespace, env, stop) -> int | str:
    """Build the trainer and train: the status of ``Trainer.train``, or an exit code after an
    error that every rank reports alike."""
    from scalegan.data.pipeline import DataError
    from scalegan.metrics.features import MissingWeightsError, WeightsLoadError
    from scalegan.train.checkpoint import CheckpointError, DiskFullError, ResumeError
    from scalegan.train.rundir import RunDirError
    from scalegan.train.trainer import DivergenceError, Trainer
    from scalegan.train.transfer import TransferError

    try:
        trainer = Trainer(cfg, env)
    except (MissingWeightsError, WeightsLoadError, TransferError, CheckpointError,
            DataError) as e:
        return _fail(str(e))
    if env.is_main:
        print(_describe_models(cfg) + f", {env.world_size} rank(s), strategy "
              f"{trainer.strategy.name}", file=sys.stderr)
    try:
        return trainer.train(max_steps=args.max_steps, stop=stop)
    except (DataError, ResumeError, RunDirError, CheckpointError) as e:
        return _fail(str(e))
    except DivergenceError as e:
        return _fail(str(e), EXIT_DIVERGED)
    except DiskFullError as e:
        return _fail(e.strerror, EXIT_DISK_FULL)
    finally:
        trainer.close()


def _w_space_mode(args: argparse.Namespace) -> str | None:
    """``mix`` or ``interpolate`` when one of them is asked for (ValueError naming the options
    that do not go with it), else None (a grid or images from noise)."""
    mode = "mix" if args.mix is not None else "interpolate" if args.interpolate is not None \
        else None
    if args.mix is not None and args.interpolate is not None:
        raise ValueError("--mix and --interpolate are two different outputs: give one")
    if mode is None:
        for option, value, partner in (("--seeds", args.seeds, "--interpolate"),
                                       ("--fps", args.fps, "--interpolate"),
                                       ("--mix-styles", args.mix_styles, "--mix"),
                                       ("--mix-cutoff", args.mix_cutoff, "--mix")):
            if value is not None:
                raise ValueError(f"{option} goes with {partner}")
        return None
    given = {"--individual": args.individual, "--input": args.input is not None,
             "--label": args.label is not None, "--embedding": args.embedding is not None,
             "--stages all": args.stages == "all", "--direction": args.direction is not None}
    if mode == "mix":
        given.update({"--seeds": args.seeds is not None, "--fps": args.fps is not None})
        if args.mix_styles is not None and args.mix_cutoff is not None:
            raise ValueError("--mix-styles and --mix-cutoff both choose the mixed styles: give "
                             "one")
    else:
        given.update({"--mix-styles": args.mix_styles is not None,
                      "--mix-cutoff": args.mix_cutoff is not None})
        if args.seeds is None:
            raise ValueError("--interpolate walks through seeds: give them with --seeds (e.g. "
                             "--seeds 1,2,3)")
    for option, on in given.items():
        if on:
            raise ValueError(f"{option} does not apply to --{mode}")
    return mode


def cmd_generate(args: argparse.Namespace) -> int:
    from scalegan.generate import generate, interpolate, parse_seeds, style_mix

    embedding = None
    if args.embedding is not None:
        try:
            embedding = [float(v) for v in args.embedding.split(",")]
        except ValueError:
            return _fail(f"--embedding {args.embedding!r} is not a comma-separated list of numbers")
    truncation = {"truncation": args.truncation, "truncation_cutoff": args.truncation_cutoff}
    try:
        mode = _w_space_mode(args)
        if mode == "mix":
            out = args.out if args.out is not None else "mix.png"
            path = style_mix(args.checkpoint, parse_seeds(args.mix[0], "--mix SEEDS_A"),
                             parse_seeds(args.mix[1], "--mix SEEDS_B"), out,
                             styles=args.mix_styles or "coarse", mix_cutoff=args.mix_cutoff,
                             **truncation)
        elif mode == "interpolate":
            out = args.out if args.out is not None else "walk.gif"
            path = interpolate(args.checkpoint, parse_seeds(args.seeds, "--seeds"),
                               args.interpolate, out,
                               fps=24.0 if args.fps is None else args.fps, **truncation)
        else:
            out = args.out if args.out is not None else "grid.png"
            paths = generate(args.checkpoint, num=args.num, out=out, seed=args.seed,
                             individual=args.individual, label=args.label,
                             embedding=embedding, stages=args.stages, input=args.input,
                             direction=args.direction, **truncation)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    if mode is not None:
        print(f"wrote {path}")
        return 0
    print(f"wrote {paths[0]}" if len(paths) == 1 and args.input is None
          else f"wrote {len(paths)} images to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scalegan.export import export_generator

    try:
        path, metadata = export_generator(args.checkpoint, args.out,
                                          truncation_cutoff=args.truncation_cutoff)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    size = metadata["resolution"]
    print(f"wrote {path}: G(z (N, {metadata['latent_dim']}), truncation_psi ()) -> images "
          f"(N, {metadata['img_channels']}, {size}, {size}); load it with "
          f"torch.export.load(open(path, 'rb')).module()")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from scalegan.config import ConfigError, EvalConfig
    from scalegan.data.pipeline import DataError
    from scalegan.generate import checkpoint_config
    from scalegan.metrics.evaluate import evaluate, extractor_for
    from scalegan.metrics.features import MissingWeightsError, WeightsLoadError
    from scalegan.parallel.env import init_distributed, shutdown
    from scalegan.train.checkpoint import CheckpointError, resolve_checkpoint, verify
    from scalegan.train.schedule import Phase

    if args.num_real is not None and args.num_real < 0:
        return _fail(f"--num-real {args.num_real}: expected 0 (all) or a positive count")
    try:
        path = resolve_checkpoint(args.checkpoint)
        meta = verify(path, scope="dcp")
        cfg = checkpoint_config(path, meta)
        options = {"metrics": args.metrics, "real": args.real, "num_fake": args.num_fake,
                   "num_real": args.num_real, "extractor": args.extractor,
                   "weights": args.weights, "batch_size": args.batch, "seed": args.seed}
        ec = dataclasses.replace(cfg.eval, **{k: v for k, v in options.items() if v is not None})
        ec = EvalConfig(**dataclasses.asdict(ec))  # validates
    except (FileNotFoundError, ConfigError, CheckpointError) as e:
        return _fail(str(e))
    if not ec.real and not cfg.data.shards:
        return _fail("--real is required: the checkpoint's config has no data.shards")

    from scalegan.generate import load_inference

    env = init_distributed()
    try:
        family, nets, _ = load_inference(path, meta)
        extractor = None if family.metrics else extractor_for(ec, env.device)
        for net in nets.values():
            net.to(env.device)
        phase = Phase(meta["phase"]["resolution"], meta["phase"]["alpha"])
        results, _ = evaluate(nets, cfg, phase, env, extractor, ec=ec, family=family)
    except (MissingWeightsError, WeightsLoadError, DataError, ValueError) as e:
        return _fail(str(e))
    finally:
        shutdown(env)
    args.exit_at_once = env.distributed  # as for train: no interpreter teardown after gloo
    if not env.is_main:
        return 0
    if family.metrics:
        print(f"{path} at {phase.resolution}x{phase.resolution}: model.arch={cfg.model.arch} "
              f"on held-out images")
    else:
        print(f"{path} at {phase.resolution}x{phase.resolution}: {int(results['num_fake'])} "
              f"generated vs {int(results['num_real'])} real images, {ec.extractor} features")
    for key, value in results.items():
        if not key.startswith(("num_", "real_")):
            print(f"{key:10s} {value:.6g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(path), **results}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalegan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pack", help="image folder (or 'demo') -> WebDataset tar shards")
    p.add_argument("src", help="folder of jpg/png/webp/bmp images, 'demo' for built-in faces, "
                               "or a built-in set with held-out parts: demo-split (faces), "
                               "demo-domains (faces and negatives), demo-digits (8x8 digits)")
    p.add_argument("out", help="output directory for NNNNNN.tar shards and index.json")
    p.add_argument("--resolution", type=int, default=None, help="square side in pixels")
    p.add_argument("--shard-size", type=int, default=None, help="samples per shard (1000)")
    p.add_argument("--fit", choices=("crop", "pad"), default="crop",
                   help="non-square images: centre-crop (default) or pad with black")
    p.add_argument("--labels", default=None,
                   help="'dirs' (class = top-level folder under SRC) or a JSON file mapping each "
                        "image's relative path to a class id or a list of numbers")
    p.add_argument("--min-resolution", type=int, default=None,
                   help="smallest stored level: every halving from --resolution down to this is "
                        "stored too, in OUT/rR/ (power of two >= 4; default 8; equal to "
                        "--resolution: the packed resolution only)")
    p.add_argument("--encoding", choices=("auto", "png", "rgb", "jpeg"), default=None,
                   help="image encoding of every level: raw rgb, png, jpeg (lossy), or auto "
                        "(default: rgb up to 256, png above)")
    p.add_argument("--jpeg-quality", type=int, default=None, help="--encoding jpeg: 1-100 (95)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that read and encode the images (default: one per CPU core; "
                        "the shards are the same for any number)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    from scalegan.data.holdout import count_or_fraction

    p.add_argument("--holdout", type=count_or_fraction, default=None, metavar="N",
                   help="keep N images (a count, or a fraction such as 0.2) out of OUT, as a "
                        "pack of their own in OUT/holdout: those whose source name has the "
                        "smallest SHA-256, so the split does not depend on file order")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("train", help="train a GAN from a YAML config and key.sub=value overrides")
    p.add_argument("config", help="YAML config, e.g. configs/demo_faces32_pggan.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--dry-run", action="store_true", help="print model sizes and exit")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="images from a checkpoint's G_ema")
    p.add_argument("checkpoint", help="checkpoint dir, its 'latest' link, or a run directory")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--out", default=None,
                   help="grid PNG path (default grid.png), or folder with --individual; "
                        "--mix: the grid (mix.png); --interpolate: walk.gif or .mp4 (walk.gif)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--individual", action="store_true", help="one PNG per image in --out")
    p.add_argument("--label", type=int, default=None,
                   help="class id to draw (models with model.condition=label; default: every "
                        "class in turn)")
    p.add_argument("--embedding", default=None,
                   help="comma-separated attribute vector (models with model.condition=embedding)")
    p.add_argument("--stages", choices=("final", "all"), default="final",
                   help="StackGAN: the last stage only, or every stage side by side")
    p.add_argument("--input", default=None,
                   help="a folder of images to translate / upscale / reconstruct (families that "
                        "take images: cyclegan, srgan, aae); one output per input in --out")
    p.add_argument("--direction", default=None,
                   help="two-way translators (cyclegan): a2b (default) or b2a")
    w = p.add_argument_group(
        "W space (model.arch=stylegan2)",
        "The latent of seed S is the first one '--seed S' draws: torch.randn(1, latent_dim) "
        "from torch.Generator().manual_seed(S). Images use the constant noise maps.")
    w.add_argument("--truncation", type=float, default=None, metavar="PSI",
                   help="truncation trick w_avg + PSI * (w - w_avg) toward the tracked w_avg: "
                        "1 none, 0 the average image, 0.5-0.7 typical")
    w.add_argument("--truncation-cutoff", type=int, default=None, metavar="K",
                   help="truncate styles 0 .. K-1 only (default: all)")
    w.add_argument("--mix", nargs=2, default=None, metavar=("SEEDS_A", "SEEDS_B"),
                   help="style-mixing grid (e.g. --mix 1,2,3 10-13): top row the B images, "
                        "left column the A images, cell (a, b) the styles of A with those of "
                        "--mix-styles / --mix-cutoff taken from B; top-left tile black")
    w.add_argument("--mix-styles", choices=("coarse", "middle", "fine"), default=None,
                   help="styles taken from B, as in the StyleGAN papers (two per resolution): "
                        "coarse = 4^2-8^2 (styles 0-3: pose, face shape), middle = 16^2-32^2 "
                        "(4-7: features, hair), fine = 64^2 and up (8-: colours, micro "
                        "structure); default coarse")
    w.add_argument("--mix-cutoff", type=int, default=None, metavar="K",
                   help="take styles 0 .. K-1 from B instead of a --mix-styles group")
    w.add_argument("--interpolate", type=int, default=None, metavar="N",
                   help="latent walk of N frames, one image each: linear interpolation in W "
                        "between the (truncated) styles of --seeds, back to the first; "
                        "--out .gif or .mp4 (needs imageio-ffmpeg)")
    w.add_argument("--seeds", default=None,
                   help="--interpolate: the seeds to walk through, e.g. 1,2,3 or 0-4")
    w.add_argument("--fps", type=float, default=None,
                   help="--interpolate: frames per second (24)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="a stylegan2 checkpoint's G_ema as one torch.export file")
    p.add_argument("checkpoint", help="checkpoint dir, its 'latest' link, or a run directory")
    p.add_argument("--out", default="G.pt2",
                   help="output file (default G.pt2): a torch.export archive that torch alone "
                        "loads, G(z (N, latent_dim), truncation_psi (0-dim tensor)) -> images "
                        "in [-1, 1] with the constant noise; metadata in its scalegan.json")
    p.add_argument("--truncation-cutoff", type=int, default=None, metavar="K",
                   help="the exported G truncates styles 0 .. K-1 only (default: all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="FID / KID / precision-recall of a checkpoint's G_ema")
    p.add_argument("checkpoint", help="checkpoint dir, its 'latest' link, or a run directory")
    p.add_argument("--real", default=None, help="real shards (default: the run's data.shards)")
    p.add_argument("--metrics", default=None, help="comma-separated: fid,kid,pr (default fid)")
    p.add_argument("--num-fake", type=int, default=None, help="generated images (10000)")
    p.add_argument("--num-real", type=int, default=None, help="real images (0: all)")
    p.add_argument("--extractor", choices=("inception", "random"), default=None,
                   help="inception (the FID network, a local file) or random (quick, "
                        "comparable only with itself)")
    p.add_argument("--weights", default=None,
                   help="Inception weights file (default: $SCALEGAN_INCEPTION_WEIGHTS, then "
                        "~/.cache/scalegan/inception-2015-12-05.pt)")
    p.add_argument("--batch", type=int, default=None, help="images per call on each rank (64)")
    p.add_argument("--seed", type=int, default=None, help="latents and KID subsets (0)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train CONFIG --max-steps 5 a.b=c`: overrides may also come after the options
    if getattr(args, "overrides", None) is not None:
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (or pressed twice)
        print("scalegan: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "exit_at_once", False):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
