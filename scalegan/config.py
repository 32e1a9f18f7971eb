"""One typed configuration tree for every scalegan command.

Values are merged in this order: dataclass defaults -> YAML file -> ``a.b=c`` overrides.
Every field is documented where it is declared and validated in ``__post_init__`` (types by
``_coerce``), so a bad value fails before any work starts with a message that names the key.
The resolved tree is written to the run directory and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; names the key."""


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


@dataclass
class ModelConfig:
    arch: Literal["progressive", "dcgan", "stackgan", "mlp"] = "progressive"
    """progressive: PGGAN-style growing G/D (fade-in, equalized LR, pixel norm, minibatch stddev);
    dcgan: a fixed-resolution DCGAN pair; stackgan: StackGAN-v2, one image and one D per stage
    (base_resolution, twice that, ... up to resolution), trained jointly; mlp: a plain MLP pair
    on 2-D points (data.source=points), the mode-coverage benchmarks' model."""
    resolution: int = 256
    """Final image side in pixels; a power of two from 8 to 1024."""
    img_channels: int = 3
    """Image channels (3 for RGB)."""
    latent_dim: int = 512
    """Size of the latent vector z."""
    channel_base: int = 16384
    """Feature maps at resolution r are min(channel_base // r, channel_max): 16384/512 gives the
    PGGAN 1024^2 schedule (512 up to 32^2, then 256, 128, 64, 32, 16)."""
    channel_max: int = 512
    """Upper bound on feature maps at any resolution."""
    mbstd_group_size: int = 4
    """Minibatch-stddev group size in D (0 disables the layer)."""
    mbstd_num_channels: int = 1
    """Feature maps appended by minibatch stddev."""
    mbstd_across_ranks: bool = False
    """Form the minibatch-stddev groups over the batch of all data-parallel ranks (gathered),
    for per-GPU batches too small for a group of their own."""
    mbdisc_kernels: int = 0
    """Minibatch discrimination (Salimans et al. 2016) in D's last block: number of kernels B
    (features appended); 0 disables it."""
    mbdisc_dim: int = 16
    """Minibatch discrimination: dimension C of each kernel's projection."""
    mbdisc_across_ranks: bool = False
    """Compare each sample with the batch of all data-parallel ranks (gathered) in minibatch
    discrimination, so its statistic does not change with the number of ranks."""
    ops_impl: Literal["auto", "ref", "cpu", "triton"] = "auto"
    """Implementation of the fused ops (upsample+conv, minibatch stddev and discrimination):
    auto = the path measured fastest for the op, device and input size
    (scalegan.ops._impl.AUTO_TABLE; torch paths wherever no Triton kernel has been measured
    faster); ref = the plain reference; cpu = the fast torch path; triton = the kernels.
    Checkpoints are the same whichever trained them."""
    base_resolution: int = 64
    """StackGAN: image side of the first stage (64 as published); the model has
    log2(resolution / base_resolution) + 1 stages: 3 at 256^2, 5 at 1024^2."""
    gf_dim: int = 64
    """StackGAN: G's feature maps at the first stage, doubled per halving of the resolution
    down to 4x4 (16x at a 64^2 base, as published; 4x at a 16^2 base), halved per later
    stage."""
    df_dim: int = 64
    """StackGAN: each stage D's feature maps after its first convolution (doubled per
    downsampling, up to 8x)."""
    condition: Literal["none", "label", "embedding"] = "none"
    """Conditioning, read from each sample's JSON in the shards (``scalegan pack --labels``):
    none; label (a class id, "label": every arch); embedding (a vector, "attributes", through
    conditioning augmentation with its KL term: StackGAN only)."""
    cond_d: Literal["concat", "projection"] = "projection"
    """condition=label outside StackGAN: how D takes the label. concat: its embedding joined to
    D's input (mlp) or to its last 4x4 features (dcgan, progressive), as in Mirza & Osindero
    2014; projection: the inner product of the embedding with D's last features added to the
    logit (Miyato & Koyama 2018)."""
    num_classes: int = 0
    """Classes for condition=label (class ids 0 .. num_classes - 1)."""
    embedding_dim: int = 0
    """Length of the attribute/embedding vector for condition=embedding."""
    cond_dim: int = 128
    """Size of the condition vector G and D join to their features."""
    mlp_hidden: int = 128
    """MLP: units of each hidden layer of G and D."""
    mlp_layers: int = 3
    """MLP: hidden layers of G and of D."""
    mlp_maxout: int = 0
    """MLP: pieces of each maxout unit of D's hidden layers (Goodfellow et al. 2013; the
    original GAN's D); 0: LeakyReLU(0.2) units."""
    mlp_dropout: float = 0.0
    """MLP: dropout probability on the inputs of D's hidden and output layers (the original
    GAN's D; its masks drawn from the run's shared RNG); 0 disables it."""
    spectral_norm: Literal["none", "d", "both"] = "none"
    """Spectral normalisation (Miyato et al. 2018) of every convolution and linear layer's
    weight: none, D's only ("d"), or D's and G's ("both"). Its power-iteration vectors are
    buffers: checkpointed and identical on every rank."""

    @property
    def stages(self) -> int:
        """StackGAN stages: base_resolution, 2x, ... up to resolution."""
        return (self.resolution // self.base_resolution).bit_length()

    def __post_init__(self) -> None:
        _check(self.arch in ("progressive", "dcgan", "stackgan", "mlp"), "model.arch", self.arch,
               "progressive | dcgan | stackgan | mlp")
        _check(self.mlp_hidden >= 1, "model.mlp_hidden", self.mlp_hidden, ">= 1")
        _check(self.mlp_layers >= 1, "model.mlp_layers", self.mlp_layers, ">= 1")
        _check(_is_pow2(self.resolution) and 8 <= self.resolution <= 1024, "model.resolution",
               self.resolution, "a power of two from 8 to 1024")
        _check(self.img_channels in (1, 3), "model.img_channels", self.img_channels, "1 or 3")
        _check(self.latent_dim >= 1, "model.latent_dim", self.latent_dim, ">= 1")
        _check(self.channel_base >= 1, "model.channel_base", self.channel_base, ">= 1")
        _check(self.channel_max >= 1, "model.channel_max", self.channel_max, ">= 1")
        _check(self.mbstd_group_size >= 0, "model.mbstd_group_size", self.mbstd_group_size, ">= 0")
        _check(self.mbstd_num_channels >= 1, "model.mbstd_num_channels", self.mbstd_num_channels,
               ">= 1")
        _check(self.mbdisc_kernels >= 0, "model.mbdisc_kernels", self.mbdisc_kernels, ">= 0")
        _check(self.mbdisc_dim >= 1, "model.mbdisc_dim", self.mbdisc_dim, ">= 1")
        _check(self.condition in ("none", "label", "embedding"), "model.condition",
               self.condition, "none | label | embedding")
        _check(self.cond_d in ("concat", "projection"), "model.cond_d", self.cond_d,
               "concat | projection")
        _check(self.mlp_maxout >= 0 and self.mlp_maxout != 1, "model.mlp_maxout",
               self.mlp_maxout, "0 (no maxout) or >= 2 pieces")
        _check(0 <= self.mlp_dropout < 1, "model.mlp_dropout", self.mlp_dropout, "0 <= p < 1")
        _check(self.spectral_norm in ("none", "d", "both"), "model.spectral_norm",
               self.spectral_norm, "none | d | both")
        if self.arch == "stackgan":
            _check(_is_pow2(self.base_resolution) and 8 <= self.base_resolution
                   <= self.resolution, "model.base_resolution", self.base_resolution,
                   f"a power of two from 8 to model.resolution={self.resolution}")
            _check(self.gf_dim >= 1, "model.gf_dim", self.gf_dim, ">= 1")
            _check(self.df_dim >= 1, "model.df_dim", self.df_dim, ">= 1")
            _check(self.cond_dim >= 1, "model.cond_dim", self.cond_dim, ">= 1")
            if self.condition == "label":
                _check(self.num_classes >= 2, "model.num_classes", self.num_classes,
                       ">= 2 with model.condition=label")
            if self.condition == "embedding":
                _check(self.embedding_dim >= 1, "model.embedding_dim", self.embedding_dim,
                       ">= 1 with model.condition=embedding")
        else:
            _check(self.condition in ("none", "label"), "model.condition", self.condition,
                   f"none | label with model.arch={self.arch} (embedding is StackGAN's)")
            if self.condition == "label":
                _check(self.num_classes >= 2, "model.num_classes", self.num_classes,
                       ">= 2 with model.condition=label")
                _check(self.cond_dim >= 1, "model.cond_dim", self.cond_dim, ">= 1")

    def channels(self, res: int) -> int:
        """Feature maps of the block that works at ``res`` x ``res``."""
        return max(1, min(self.channel_base // res, self.channel_max))


@dataclass
class DataConfig:
    source: Literal["shards", "points"] = "shards"
    """shards: images from WebDataset shards (data.shards); points: 2-D points drawn from the
    Gaussian mixture data.points (for model.arch=mlp)."""
    points: Literal["ring8", "grid25"] = "grid25"
    """The point mixture: ring8 (8 Gaussians on a circle) or grid25 (a 5x5 grid of Gaussians), in
    the scale of the Unrolled-GAN / VEEGAN / PacGAN papers."""
    shards: str = ""
    """Training shards: a directory holding index.json (as written by `scalegan pack`), a brace
    pattern such as 'shards/{000000..000031}.tar', or a comma-separated list of tar paths."""
    shards_b: str = ""
    """A second shard set, for families that read two unpaired data sets (CycleGAN's domain B;
    data.shards is domain A); same forms as data.shards."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 decodes in the training process)."""
    shuffle_buffer: int = 1000
    """Samples each worker holds in its seeded shuffle buffers: one buffer of a quarter of this
    for each of the four shards it reads at once."""
    xflip: bool = True
    """Mirror each image left-right with probability 1/2 (seeded)."""
    max_skip: int = 1000
    """Consecutive undecodable samples after which the data set is taken to be unusable: the run
    stops with an error naming the shards (as it does after an epoch with no decodable image)."""
    allow_unindexed: bool = False
    """Accept a data.shards directory of tar files without the index.json `scalegan pack`
    writes last (otherwise refused: it may hold an interrupted pack, or several mixed)."""
    retries: int = 5
    """Times a shard (or an index.json given as a URL) is re-opened after its reading fails
    midway (connection dropped, HTTP error status, a pipe: command exiting non-zero); reading
    continues after the last sample delivered. A shard still failing then is skipped for the
    epoch, with an error in the log."""
    retry_backoff: float = 1.0
    """Seconds waited before the first retry of a shard; doubled before each further one, up to
    60 s."""
    holdout: str = "auto"
    """Held-out real images (shards, as data.shards), never trained on: D's mean output on them
    is logged as ``d/holdout`` beside ``d/real``, and periodic evaluation compares with them.
    auto: the held-out set `scalegan pack --holdout` wrote into the data.shards pack, if any;
    none: no held-out set."""

    def __post_init__(self) -> None:
        _check(self.source in ("shards", "points"), "data.source", self.source, "shards | points")
        _check(self.retries >= 0, "data.retries", self.retries, ">= 0")
        _check(self.retry_backoff >= 0, "data.retry_backoff", self.retry_backoff, ">= 0")
        _check(self.max_skip >= 1, "data.max_skip", self.max_skip, ">= 1")
        _check(self.points in ("ring8", "grid25"), "data.points", self.points, "ring8 | grid25")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        _check(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, ">= 1")


@dataclass
class OptimConfig:
    kind: Literal["adam", "rmsprop"] = "adam"
    """Optimizer of every network: Adam (beta1, beta2, eps) or RMSProp (alpha, eps; the
    original WGAN's and DualGAN's)."""
    g_lr: float = 1e-3
    """Learning rate of G (and of the family's other generator-side networks)."""
    d_lr: float = 1e-3
    """Learning rate of D (and of the family's other critics)."""
    beta1: float = 0.0
    beta2: float = 0.99
    alpha: float = 0.99
    """RMSProp's smoothing constant (PyTorch's default, as the WGAN code uses)."""
    eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("g_lr", "d_lr", "eps"):
            v = getattr(self, name)
            _check(v > 0, f"optim.{name}", v, "> 0")
        _check(self.kind in ("adam", "rmsprop"), "optim.kind", self.kind, "adam | rmsprop")
        for name in ("beta1", "beta2", "alpha"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"optim.{name}", v, "0 <= value < 1")


LOSS_KINDS = ("nonsaturating", "minimax", "lsgan", "hinge", "wgan", "wgan_gp", "rpgan")


@dataclass
class LossConfig:
    kind: Literal["nonsaturating", "minimax", "lsgan", "hinge", "wgan", "wgan_gp",
                  "rpgan"] = "nonsaturating"
    """Adversarial loss of the single-D families: non-saturating logistic; minimax (the
    saturating original, G minimises log(1 - D(G(z)))); lsgan (least squares, targets 0/1);
    hinge; wgan (critic weights clipped to +-loss.clip); wgan_gp (gradient penalty and drift);
    rpgan (relativistic pairing, softplus(D(fake) - D(real)))."""
    r1_gamma: float = 0.0
    """R1 weight on real images (0 disables); applied lazily every r1_interval steps."""
    r2_gamma: float = 0.0
    """R2 weight on generated images (0 disables); lazy with R1, in the same phase."""
    r1_interval: int = 16
    """Steps between R1 (and R2) evaluations; the penalty is scaled by the interval (lazy
    regularisation)."""
    gp_weight: float = 10.0
    """WGAN-GP gradient-penalty weight (lambda)."""
    drift: float = 1e-3
    """WGAN-GP drift term weight (epsilon_drift * D(real)^2)."""
    clip: float = 0.01
    """kind=wgan: D's weights are clamped to [-clip, clip] after each of its updates."""
    margin: float = 10.0
    """EBGAN: the margin m of D's hinge on fakes' energy, [m - D(G(z))]^+."""
    pt_weight: float = 0.1
    """EBGAN: weight of the pulling-away term in G's loss (0 disables it)."""
    uncond_weight: float = 1.0
    """StackGAN, conditional runs: weight of the unconditional terms beside the conditional ones
    (StackGAN-v2's UNCOND_LOSS)."""
    color_weight: float = 50.0
    """StackGAN: weight of the colour-consistency term between adjacent stages in G's loss (50 in
    StackGAN-v2's unconditional configs; 0 disables it)."""
    kl_weight: float = 2.0
    """StackGAN, condition=embedding: weight of the conditioning augmentation's KL term in G's
    loss (StackGAN-v2's birds config)."""

    def __post_init__(self) -> None:
        _check(self.kind in LOSS_KINDS, "loss.kind", self.kind, " | ".join(LOSS_KINDS))
        _check(self.r1_gamma >= 0, "loss.r1_gamma", self.r1_gamma, ">= 0")
        _check(self.r2_gamma >= 0, "loss.r2_gamma", self.r2_gamma, ">= 0")
        _check(self.r1_interval >= 1, "loss.r1_interval", self.r1_interval, ">= 1")
        _check(self.gp_weight >= 0, "loss.gp_weight", self.gp_weight, ">= 0")
        _check(self.drift >= 0, "loss.drift", self.drift, ">= 0")
        _check(self.clip > 0, "loss.clip", self.clip, "> 0")
        _check(self.margin > 0, "loss.margin", self.margin, "> 0")
        for name in ("pt_weight", "uncond_weight", "color_weight", "kl_weight"):
            v = getattr(self, name)
            _check(v >= 0, f"loss.{name}", v, ">= 0")


@dataclass
class ScheduleConfig:
    start_resolution: int = 8
    """Resolution at which a progressive run starts (power of two, >= 4). DCGAN ignores it."""
    fade_kimg: float = 600.0
    """Thousands of images over which a new block fades in (alpha 0 -> 1)."""
    stable_kimg: float = 600.0
    """Thousands of images trained at each resolution after its fade-in."""

    def __post_init__(self) -> None:
        _check(_is_pow2(self.start_resolution) and self.start_resolution >= 4,
               "train.schedule.start_resolution", self.start_resolution, "a power of two >= 4")
        _check(self.fade_kimg >= 0, "train.schedule.fade_kimg", self.fade_kimg, ">= 0")
        _check(self.stable_kimg >= 0, "train.schedule.stable_kimg", self.stable_kimg, ">= 0")


@dataclass
class TrainConfig:
    total_kimg: float = 12000.0
    """Length of the run in thousands of real images shown to D."""
    batch_size: int = 32
    """Global batch per optimizer step (summed over micro-batches and ranks)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step; batch_size must divide evenly."""
    seed: int = 0
    """Seeds weights, latents, data order and flips: the same seed gives the same run."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 runs G and D forward passes under bf16 autocast; weights and optimizer stay fp32."""
    ema_halflife_kimg: float = 10.0
    """Half-life of the G_ema average, in thousands of images."""
    ema_rampup: float = 0.05
    """Half-life is at most ema_rampup * images seen early in the run (0 disables the ramp-up)."""
    on_nonfinite: Literal["skip", "stop", "rollback"] = "skip"
    """What a step whose loss or gradients are NaN or inf does: its updates are never applied;
    skip: count it and go on; stop: end the run at once; rollback: also restore G, D, G_ema and
    the optimizers from the newest checkpoint (the data and counters go on). Every policy stops
    with exit status 4 after ``max_nonfinite`` such steps in a row."""
    max_nonfinite: int = 10
    """Consecutive non-finite steps after which the run stops as diverged (exit status 4)."""
    pretrain_kimg: float = 0.0
    """Thousands of images of a family's pre-training phase before its adversarial phases
    (SRGAN: the MSE-only SRResNet training); families without one ignore it."""
    d_steps: int = 0
    """D updates per G update (n_critic): G trains in every d_steps-th step, after its D
    updates, each on its own batch; 0: 5 with loss.kind=wgan (Arjovsky et al. 2017), else 1.
    Images seen (total_kimg) count D's real images."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    init_from: str = ""
    """Start this run from another run's weights (transfer learning): a run directory or one of
    its checkpoints. Every network and averaged copy is read (not the optimizers, counters or
    data position); a block the new model has and the old one lacks (a progressive run grown
    to a higher resolution) starts from scratch. Any other difference stops the run, naming the
    keys. Ignored when this run resumes from its own checkpoint."""
    freeze_d: int = 0
    """Freeze-D (Mo et al. 2020): D's first K blocks, counted from its input (the highest
    resolutions), keep their weights; the rest of D trains."""

    def __post_init__(self) -> None:
        _check(self.freeze_d >= 0, "train.freeze_d", self.freeze_d, ">= 0")
        _check(self.d_steps >= 0, "train.d_steps", self.d_steps, ">= 0 (0: the loss's default)")
        _check(self.total_kimg > 0, "train.total_kimg", self.total_kimg, "> 0")
        _check(0 <= self.seed < 2 ** 32, "train.seed", self.seed, "an integer from 0 to 2^32 - 1")
        _check(self.on_nonfinite in ("skip", "stop", "rollback"), "train.on_nonfinite",
               self.on_nonfinite, "skip | stop | rollback")
        _check(self.max_nonfinite >= 1, "train.max_nonfinite", self.max_nonfinite, ">= 1")
        _check(self.pretrain_kimg >= 0, "train.pretrain_kimg", self.pretrain_kimg, ">= 0")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _check(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, ">= 1")
        _check(self.batch_size % self.grad_accum == 0, "train.grad_accum", self.grad_accum,
               f"a divisor of train.batch_size={self.batch_size}")
        _check(self.precision in ("fp32", "bf16"), "train.precision", self.precision, "fp32 | bf16")
        _check(self.ema_halflife_kimg >= 0, "train.ema_halflife_kimg", self.ema_halflife_kimg,
               ">= 0")
        _check(self.ema_rampup >= 0, "train.ema_rampup", self.ema_rampup, ">= 0")


@dataclass
class ParallelConfig:
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """How G and D are spread over ranks: ddp replicates them, fsdp shards them (FSDP2),
    deepspeed gives each its own DeepSpeed engine at ZeRO stage ``zero_stage``.
    A single process trains the plain modules whatever this says."""
    reshard_after_forward: bool = True
    """FSDP: free gathered parameters after each block's forward (less memory, more traffic)."""
    param_dtype: Literal["fp32", "bf16"] = "fp32"
    """FSDP mixed precision: dtype of gathered parameters for compute."""
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """FSDP mixed precision: dtype of gradient reduction."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 1 shards Adam's state, 2 also gradients, 3 also parameters."""
    deepspeed: dict = field(default_factory=dict)
    """Extra DeepSpeed config keys, merged over the config scalegan derives (batch sizes,
    gradient accumulation, ZeRO stage, bf16 from train.precision, no gradient clipping), e.g.
    ``parallel.deepspeed.zero_optimization.reduce_bucket_size=50000000``."""

    def __post_init__(self) -> None:
        _check(self.strategy in ("ddp", "fsdp", "deepspeed"), "parallel.strategy", self.strategy,
               "ddp | fsdp | deepspeed")
        _check(self.zero_stage in (1, 2, 3), "parallel.zero_stage", self.zero_stage, "1, 2 or 3")
        derived = ("train_batch_size", "train_micro_batch_size_per_gpu",
                   "gradient_accumulation_steps")
        for key in derived:
            _check(key not in self.deepspeed, f"parallel.deepspeed.{key}", self.deepspeed.get(key),
                   "unset: it is derived from train.batch_size and train.grad_accum")
        zero = self.deepspeed.get("zero_optimization", {})
        stage = zero.get("stage", self.zero_stage) if isinstance(zero, dict) else self.zero_stage
        _check(stage == self.zero_stage, "parallel.deepspeed.zero_optimization.stage", stage,
               "unset: set parallel.zero_stage instead")


@dataclass
class CheckpointConfig:
    every_kimg: float = 50.0
    """Write a checkpoint every this many thousand images (and always at the end)."""
    keep: int = 3
    """Newest checkpoints kept; older ones are deleted after a newer one is complete."""
    resume: bool = True
    """Resume from the newest complete checkpoint in the run directory if there is one (a
    damaged newer one is moved aside as step_X.corrupt and the next older one tried)."""
    overwrite: bool = False
    """With resume=false in a run directory that already holds checkpoints: move its
    checkpoints, metrics and samples aside (into previous-<time>/) and start over. Without it
    such a start is refused."""

    def __post_init__(self) -> None:
        _check(self.every_kimg > 0, "checkpoint.every_kimg", self.every_kimg, "> 0")
        _check(self.keep >= 1, "checkpoint.keep", self.keep, ">= 1")


@dataclass
class LogConfig:
    every_steps: int = 10
    """Steps between rows of metrics.jsonl and W&B scalars."""
    sample_every_kimg: float = 20.0
    """Thousands of images between sample grids of G_ema (and always at the end)."""
    sample_grid: int = 8
    """Sample grids are sample_grid x sample_grid images from fixed latents."""
    progress: bool = True
    """Show a progress bar on stderr."""
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when a W&B API key is configured, offline otherwise."""
    wandb_project: str = "scalegan"
    holdout_images: int = 64
    """At most this many held-out images (data.holdout) for ``d/holdout``, read once."""
    overfit_threshold: float = 1.0
    """A warning (log and W&B) when D's mean output on training reals exceeds that on
    held-out reals by more than this (``d/real - d/holdout``, in logits): D is memorising its
    training set (0: no warning)."""

    def __post_init__(self) -> None:
        _check(self.holdout_images >= 1, "log.holdout_images", self.holdout_images, ">= 1")
        _check(self.overfit_threshold >= 0, "log.overfit_threshold", self.overfit_threshold,
               ">= 0")
        _check(self.every_steps >= 1, "log.every_steps", self.every_steps, ">= 1")
        _check(self.sample_every_kimg > 0, "log.sample_every_kimg", self.sample_every_kimg, "> 0")
        _check(1 <= self.sample_grid <= 32, "log.sample_grid", self.sample_grid, "1..32")
        _check(self.wandb in ("auto", "online", "offline", "disabled"), "log.wandb", self.wandb,
               "auto | online | offline | disabled")


@dataclass
class AugmentConfig:
    kind: Literal["none", "ada", "diffaugment", "fixed"] = "none"
    """Augmentation of every image D sees (reals and fakes, every phase; differentiable, so G
    trains through it): ada: the ADA pipeline with p adapted to D's over-fitting (Karras et al.
    2020); fixed: the same pipeline at a fixed ``p``; diffaugment: DiffAugment's fixed policy
    (Zhao et al. 2020); none."""
    p: float = 0.0
    """Probability of each transform: ada's starting value, fixed's constant one."""
    pipe: Literal["bgc", "blit", "geom", "color"] = "bgc"
    """ADA's transform groups: blit (x-flip, 90-degree rotations, integer translation), geom
    (scaling, rotation, anisotropy, fractional translation), color (brightness, contrast, luma
    flip, hue, saturation); bgc: all three (the published default)."""
    policy: str = "color,translation,cutout"
    """DiffAugment's transforms, comma-separated."""
    target: float = 0.6
    """ADA: the value of r_t = E[sign(D(real))] that p is steered to."""
    interval: int = 4
    """ADA: D updates between adjustments of p (r_t is averaged over them)."""
    speed_kimg: float = 500.0
    """ADA: thousands of images over which p can rise from 0 to 1 (the published 500; small
    runs need far less)."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.p <= 1.0, "augment.p", self.p, "a probability in [0, 1]")
        _check(-1.0 < self.target < 1.0, "augment.target", self.target, "in (-1, 1)")
        _check(self.interval >= 1, "augment.interval", self.interval, ">= 1")
        _check(self.speed_kimg > 0, "augment.speed_kimg", self.speed_kimg, "> 0")
        names = [t.strip() for t in self.policy.split(",") if t.strip()]
        _check(bool(names) and all(t in ("color", "translation", "cutout") for t in names),
               "augment.policy", self.policy, "a comma-separated list of color, translation, "
               "cutout")


METRICS = ("fid", "kid", "pr")


@dataclass
class EvalConfig:
    every_kimg: float = 0.0
    """Evaluate G_ema every this many thousand images during training (0: only with
    `scalegan eval`). Results go to metrics.jsonl and W&B; the best checkpoint is kept."""
    metrics: str = "fid"
    """Comma-separated metrics: fid, kid, pr (precision/recall). The first one ranks checkpoints."""
    real: str = ""
    """Shards of the real images (as data.shards); empty: the held-out set (data.holdout) when
    there is one, else data.shards."""
    real_b: str = ""
    """Families that read two data sets (CycleGAN): held-out shards of the second (domain B);
    ``real`` is then domain A's."""
    num_real: int = 0
    """Real images used (the first ones in shard order; 0: all of them)."""
    num_fake: int = 10000
    """Generated images (50000 for FID50k as published)."""
    extractor: Literal["inception", "random"] = "inception"
    """inception: the FID Inception-v3 file inception-2015-12-05.pt (local only: eval.weights or
    SCALEGAN_INCEPTION_WEIGHTS or ~/.cache/scalegan/); random: a fixed random conv net, quick and
    comparable only with itself."""
    weights: str = ""
    """Path of the Inception weights file (empty: SCALEGAN_INCEPTION_WEIGHTS, then the cache)."""
    batch_size: int = 64
    """Images per extractor / generator call on each rank."""
    kid_subsets: int = 100
    """KID: number of random subsets the unbiased MMD is averaged over."""
    kid_subset_size: int = 1000
    """KID: images per subset (at most the smaller set's size)."""
    pr_k: int = 3
    """Precision/recall: the k of the k-nearest-neighbour radii."""
    pr_samples: int = 10000
    """Precision/recall: at most this many real and fake images (the k-NN is quadratic)."""
    seed: int = 0
    """Seeds the generated images' latents and KID's subsets."""

    def __post_init__(self) -> None:
        names = [m.strip() for m in self.metrics.split(",") if m.strip()]
        _check(bool(names) and all(m in METRICS for m in names), "eval.metrics", self.metrics,
               "a comma-separated list of fid, kid, pr")
        _check(self.every_kimg >= 0, "eval.every_kimg", self.every_kimg, ">= 0")
        _check(self.num_real >= 0, "eval.num_real", self.num_real, ">= 0")
        _check(self.num_fake >= 2, "eval.num_fake", self.num_fake, ">= 2")
        _check(self.batch_size >= 1, "eval.batch_size", self.batch_size, ">= 1")
        _check(self.kid_subsets >= 1, "eval.kid_subsets", self.kid_subsets, ">= 1")
        _check(self.kid_subset_size >= 2, "eval.kid_subset_size", self.kid_subset_size, ">= 2")
        _check(self.pr_k >= 1, "eval.pr_k", self.pr_k, ">= 1")
        _check(self.pr_samples >= 2, "eval.pr_samples", self.pr_samples, ">= 2")

    @property
    def metric_list(self) -> list[str]:
        return [m.strip() for m in self.metrics.split(",") if m.strip()]


@dataclass
class Config:
    name: str = "run"
    """Run name; the run directory is <runs_dir>/<name>."""
    runs_dir: str = "runs"
    """Parent directory of run directories."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model section: its dataclass is the family's of ``model.arch`` (``ModelConfig`` for
    progressive, dcgan, stackgan and mlp; each other family declares its own)."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name and "\0" not in self.name
               and self.name not in (".", ".."), "name", self.name,
               "a non-empty name without '/', other than '.' and '..' (a directory inside "
               "runs_dir)")
        from scalegan.families import archs, family_class

        family = family_class(self.model.arch)
        if family.point_data is not None:
            _check(family.point_data == (self.data.source == "points"), "data.source",
                   self.data.source, f"{'points' if family.point_data else 'shards'} with "
                   f"model.arch={self.model.arch}")
        menu = {"loss.r2_gamma": (self.loss.r2_gamma, 0.0),
                "train.d_steps": (self.train.d_steps, 0)}
        for key, (value, plain) in menu.items():
            _check(value == plain or key in family.loss_menu, key, value,
                   f"{plain} with model.arch={self.model.arch}: it has no single D trained "
                   f"by the loss menu (the families that have: {', '.join(single_d_archs())})")
        pc = self.parallel
        if (self.loss.kind == "rpgan" and "loss.r2_gamma" in family.loss_menu
                and pc.strategy == "deepspeed" and pc.zero_stage == 3):
            raise ConfigError("loss.kind='rpgan' is not allowed with parallel.strategy=deepspeed "
                              "parallel.zero_stage=3: G's relativistic loss runs the frozen D "
                              "twice in one phase (fakes, then reals), which ZeRO-3 leaves "
                              "holding D's parameters; use zero_stage 1 or 2, fsdp or ddp")
        if self.augment.kind != "none" and not family.augments:
            raise ConfigError(f"augment.kind={self.augment.kind!r} is not allowed with "
                              f"model.arch={self.model.arch}: expected none (augmentation is "
                              f"built into the families "
                              f"{', '.join(a for a in archs() if family_class(a).augments)})")
        blocks = len(family.d_blocks(self.model))
        if self.train.freeze_d > blocks:
            raise ConfigError(f"train.freeze_d={self.train.freeze_d!r} is not allowed: "
                              f"model.arch={self.model.arch} at model.resolution="
                              f"{self.model.resolution} has "
                              f"{f'{blocks} D blocks to freeze' if blocks else 'no Freeze-D'}")
        family.check(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def single_d_archs() -> list[str]:
    """The model.arch values whose one D is trained by the loss menu (loss.kind, R1, R2,
    train.d_steps)."""
    from scalegan.families import archs, family_class

    return [a for a in archs() if "loss.r2_gamma" in family_class(a).loss_menu]


# --------------------------------------------------------------------------- building and merging


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _finite(key: str, value: Any) -> Any:
    """``value`` with every float in it (nested in mappings and lists) checked to be finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not allowed: expected a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(f"{key}.{k}", v)
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite(f"{key}[{i}]", v)
    return value


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotated type ``tp`` (ints are accepted for floats; NaN and
    infinities nowhere)."""
    return _finite(key, _coerce_type(key, tp, value))


def _coerce_type(key: str, tp: Any, value: Any) -> Any:
    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {_type_name(tp)}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a mapping, "
                              f"got {type(value).__name__}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 2e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # name=2024 on the command line is a name, not a number
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}, "
                          f"got {type(value).__name__}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, naming unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}: allowed keys under "
                          f"{prefix.rstrip('.') or 'the top level'} are {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if cls is Config and name == "model":
            tp = model_config_class(value)
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, tp, value)
    return cls(**kwargs)


def model_config_class(section: Any) -> type:
    """The dataclass of a ``model`` section: that of the family its ``arch`` names."""
    from scalegan.families import family_class

    arch = section.get("arch", ModelConfig.arch) if isinstance(section, dict) else ModelConfig.arch
    try:
        return family_class(arch).config_class
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if both else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``['train.batch_size=32', 'data.shards=x/{0..3}.tar']`` -> nested dict of YAML values."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        # A pattern such as '{000000..000003}' parses as a YAML mapping: keep strings as written.
        if isinstance(value, (dict, list)):
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides``; raises ConfigError."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        tree = loaded
    tree = _deep_merge(tree, parse_overrides(overrides or []))
    return _build(Config, _fill_preset(tree), "")


def _fill_preset(tree: dict) -> dict:
    """The tree with the values of its family's preset (``Family.fill_preset``) where it has
    none."""
    from scalegan.families import family_class

    model = tree.get("model")
    arch = model.get("arch", ModelConfig.arch) if isinstance(model, dict) else ModelConfig.arch
    try:
        return family_class(arch).fill_preset(tree)
    except ValueError:
        return tree  # the model section's own check names the arch


def config_from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
