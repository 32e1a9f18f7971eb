"""What a GAN family is, as data the generic trainer runs.

A family (one module per ``model.arch`` in this package) declares:

* its config dataclass (the ``model`` section when ``model.arch`` names it);
* its networks, a name-keyed dict, and which of them get an averaged copy for inference
  (``ema``; a family whose paper averages nothing keeps a plain copy, beta 0);
* its phases, a list of :class:`PhaseSpec`: which networks each trains (the others run frozen),
  how often it runs, whether it differentiates a network w.r.t. its input, its loss function; a
  lazy regulariser's networks get StyleGAN2's Adam rescaling;
* its data streams and how one micro-batch of inputs is made from their batches and the shared,
  world-size-independent RNG (:class:`Services`);
* how it samples for grids, ``generate`` and ``eval``;
* its own state (an image pool, a running mean), checkpointed and restored exactly.

The trainer, the strategies and the checkpoints know networks only by these names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from scalegan.config import Config
from scalegan.models import count_parameters
from scalegan.monitor.grid import save_grid
from scalegan.train.schedule import Phase

Scalars = dict[str, torch.Tensor]
Loss = Callable[[Mapping[str, Callable], Any, Phase], tuple[torch.Tensor, Scalars]]


@dataclass(frozen=True)
class PhaseSpec:
    """One optimisation phase of a step, run over all micro-batches of the step."""

    name: str
    """Name in the log and in 'update of X not applied' messages: D, R1, G, recon, ..."""
    trains: tuple[str, ...]
    """Networks whose optimizers step after this phase (jointly: one loss, one backward)."""
    loss: Loss
    """``loss(nets, micro_batch, stage) -> (loss, scalars)``: ``nets[name]`` is the module to
    call (trainable for ``trains``, frozen for the others); the loss is one micro-batch's, the
    trainer divides it by the number of micro-batches."""
    frozen: tuple[str, ...] = ()
    """Networks the loss runs without training them (informative: every network not in
    ``trains`` is frozen during the phase)."""
    interval: int = 1
    """The phase runs in steps whose index is ``offset`` modulo this."""
    offset: int = 0
    """See ``interval``: G after its ``train.d_steps`` D updates has offset d_steps - 1."""
    input_gradient: str | None = None
    """A network the loss differentiates w.r.t. its input (R1, WGAN-GP): called through the
    strategy's input-gradient path."""
    kimg: tuple[float, float] = (0.0, float("inf"))
    """The phase runs while the thousands of images seen are in [start, end): a pre-training
    phase, or phases that start after it."""
    lazy: bool = False
    """A lazy regulariser (interval > 1, its loss scaled by the interval): the Adam of the
    networks it trains is rescaled by c = interval / (interval + 1) (Karras et al. 2020)."""

    def due(self, step: int, images_seen: int = 0) -> bool:
        start, end = self.kimg
        return (step % self.interval == self.offset
                and start * 1000 <= images_seen < end * 1000)


@dataclass
class Stream:
    """A data stream a family reads."""

    shards: str
    """Shard spec (as data.shards)."""
    key: str = "data.shards"
    """Config key named in errors."""
    label_key: str | None = None
    """JSON field of each sample to read as its label (``label`` or ``attributes``)."""
    pyramid: int = 1
    """Images per sample, each half the size of the previous (StackGAN's stages)."""
    check: dict = field(default_factory=dict)
    """Extra keyword arguments of ``check_pack`` (condition, num_classes, ...)."""
    points: str | None = None
    """A 2-D point mixture (data.source=points) instead of shards."""


class Services(Protocol):
    """What the trainer offers a family while it builds micro-batches and runs losses."""

    rank: int
    world: int
    device: torch.device

    def draw(self, fn: Callable, n: int, *shape: int) -> torch.Tensor:
        """The global batch (n per rank) drawn with ``fn`` from the run's shared RNG; this
        rank's rows. The same draws whatever the world size."""

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``t`` concatenated in rank order (``t`` itself on one rank)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast context (bf16 or none)."""

    def augment(self, images: torch.Tensor, draw: Callable | None = None) -> torch.Tensor:
        """``images`` as D is to see them: the run's augmentation (``augment.*``), its random
        numbers drawn for the global batch (or from ``draw``); unchanged when it is off."""

    def observe_real(self, logits: torch.Tensor) -> None:
        """D's logits on this rank's real images of one D update (ADA's r_t counts their
        signs)."""

    nets: dict[str, nn.Module]
    """The networks themselves (sharded or not, never a data-parallel wrapper): for state a
    family keeps in their buffers (StyleGAN2's ``w_avg``)."""


class Family:
    """Base of the family specs; defaults fit a noise-to-image pair named G and D."""

    arch: str = ""
    config_class: type = object
    ema: tuple[str, ...] = ("G",)
    """Networks with an averaged copy (``<name>_ema``), used for samples, generate and eval."""
    averaged: bool = True
    """False: the copies follow their networks exactly (beta 0): families whose paper averages
    nothing; the copy is what generate and eval read."""
    lr_role: Mapping[str, str] = {"G": "g", "D": "d"}
    """Which learning rate of ``optim`` each network uses ("g": optim.g_lr, "d": optim.d_lr)."""
    point_data: bool | None = False
    """Whether the family trains on 2-D points (data.source=points); None: on either, as
    data.source says."""
    loss_menu: tuple[str, ...] = ()
    """Which settings of the loss menu the family reads ("loss.r2_gamma", "train.d_steps"):
    any other set to a non-default value is a configuration error."""
    metrics: Mapping[str, bool] = {}
    """Metrics of the family's own ``evaluate`` (name -> lower is better; the first ranks
    checkpoints); empty: FID / KID / PR of generated images (``eval.metrics``)."""
    augments: bool = False
    """Whether every image its D sees goes through the run's augmentation (``augment.*``),
    its D updates report r_t and ``real_logits`` gives D's view of held-out images."""

    def __init__(self, cfg: Config, svc: Services | None = None):
        self.cfg, self.mc, self.svc = cfg, cfg.model, svc

    @property
    def on_points(self) -> bool:
        """Whether this run trains on 2-D points (data.source=points) rather than images."""
        return self.cfg.data.source == "points"

    # --------------------------------------------------------------------------- configuration

    @classmethod
    def fill_preset(cls, tree: dict) -> dict:
        """The raw config tree (file and overrides merged) with the family's preset values
        filled in where it sets none (a family without presets returns it as it is)."""
        return tree

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Cross-section checks of ``cfg`` for this family (ConfigError naming the key)."""

    @classmethod
    def d_blocks(cls, mc) -> list[tuple[str, ...]]:
        """D's blocks from its input on (the highest resolution first), each as the name
        prefixes of its parameters: what ``train.freeze_d`` counts (empty: not supported)."""
        return []

    def frozen_parameters(self, nets: Mapping[str, nn.Module], k: int) -> dict[str, set[str]]:
        """``train.freeze_d=k``: the names of D's parameters in its first ``k`` blocks."""
        if k == 0:
            return {}
        prefixes = tuple(p + "." for block in self.d_blocks(self.mc)[:k] for p in block)
        return {"D": {n for n, _ in nets["D"].named_parameters() if n.startswith(prefixes)}}

    # ------------------------------------------------------------------------------ transfer

    def check_transfer(self, saved_model: dict, where: str) -> None:
        """TransferError unless a checkpoint of model section ``saved_model`` (as written in
        its config) can initialise this run's networks: by default the same architecture at
        the same resolution (other widths show as keys of another shape)."""
        from scalegan.train.transfer import TransferError

        arch, res = saved_model.get("arch", "progressive"), saved_model.get("resolution")
        if arch != self.arch:
            raise TransferError(f"train.init_from: {where} holds a model.arch={arch} model; this "
                                f"run is model.arch={self.arch}")
        if res != self.mc.resolution and not self.transfers_resolution(res):
            raise TransferError(f"train.init_from: {where} was trained at model.resolution="
                                f"{res}; this run's is {self.mc.resolution}, and model.arch="
                                f"{self.arch} keeps the resolution of the model it starts from")

    def transfers_resolution(self, resolution: int) -> bool:
        """Whether a model trained at ``resolution`` can start this run (progressive: blocks
        added or dropped)."""
        return False

    def transfer_new_keys(self, name: str, keys: list[str]) -> set[str]:
        """Of network ``name``'s state keys only one side of a transfer has (this run's
        network, or the checkpoint), those the transfer adds or drops (an added one keeps its
        fresh initialisation); any other is an error."""
        return set()

    # -------------------------------------------------------------------------------- networks

    @classmethod
    def networks(cls, mc) -> dict[str, nn.Module]:
        """Fresh networks of the model section ``mc`` on the CPU in the default dtype, in a
        fixed order (seeded by the caller): the order fixes each network's initialisation."""
        raise NotImplementedError

    def build_networks(self) -> dict[str, nn.Module]:
        """``networks``, with spectral normalisation where ``model.spectral_norm`` asks for it
        and clipped weights clamped from the start."""
        nets = self.make_networks()
        for name in self.spectral_normalised():
            spectral_normalise(nets[name])
        for name, c in self.clipped().items():
            clamp_weights(nets[name].parameters(), c)
        return nets

    def make_networks(self) -> dict[str, nn.Module]:
        """This run's fresh networks (``networks`` of the model section, unless the family's
        networks also depend on other sections, as the MLP's on ``data.source``)."""
        return self.networks(self.mc)

    def spectral_normalised(self) -> tuple[str, ...]:
        """Networks whose weights are spectrally normalised (``model.spectral_norm``: "d" the
        critics, "both" every network)."""
        which = getattr(self.mc, "spectral_norm", "none")
        if which == "none":
            return ()
        return tuple(self.networks_of_role("d" if which == "d" else None))

    def networks_of_role(self, role: str | None) -> list[str]:
        """Network names whose learning rate is ``optim.<role>_lr`` (None: every network)."""
        return [n for n in self.lr_role if role is None or self.lr_role[n] == role]

    def clipped(self) -> dict[str, float]:
        """Networks whose weights are clamped to [-c, c] from the start and after each of their
        updates (the original WGAN's critic), by name."""
        return {}

    def d_steps(self) -> int:
        """D updates per G update: ``train.d_steps``, or the loss's default (5 for wgan)."""
        n = self.cfg.train.d_steps
        return n if n > 0 else (5 if self.cfg.loss.kind == "wgan" else 1)

    def inference_networks(self) -> tuple[str, ...]:
        """Networks ``generate`` and ``eval`` need (read from their ``_ema`` copies)."""
        return self.ema

    def describe(self, nets: Mapping[str, nn.Module]) -> str:
        size = f"{self.mc.resolution}x{self.mc.resolution}"
        parts = ", ".join(f"{name} {count_parameters(net):,} parameters "
                          f"({count_parameters(net) / 1e6:.1f}M)" for name, net in nets.items())
        return f"model {self.arch} {size}: {parts}"

    def units_in_use(self, nets: Mapping[str, nn.Module],
                     stage: Phase | None) -> dict[str, set[str] | None]:
        """Per network, the submodules (units) that run at ``stage`` (None: no units)."""
        if stage is None:
            return {name: set() for name in nets}
        return {name: net.units_in_use(stage.resolution, stage.alpha)
                if hasattr(net, "units_in_use") else None for name, net in nets.items()}

    # ------------------------------------------------------------------------------- optimizers

    def optimizers(self, nets: Mapping[str, nn.Module],
                   param_groups: Callable[[nn.Module], list[dict]]
                   ) -> dict[str, torch.optim.Optimizer]:
        """One optimizer of ``optim.kind`` per network, on ``param_groups(net)``; a network
        trained by lazy phases gets lr * c and betas ** c (RMSProp: alpha ** c),
        c = interval / (interval + 1) per lazy phase. A clipped network's optimizer clamps the
        weights it updates after each of its steps (on whatever tensors hold them: shards,
        or a ZeRO optimizer's flat fp32 partitions)."""
        oc = self.cfg.optim
        clipped = self.clipped()
        out = {}
        for name, net in nets.items():
            c = 1.0
            for spec in self.phases():
                if spec.lazy and name in spec.trains:
                    c *= spec.interval / (spec.interval + 1)
            lr = oc.g_lr if self.lr_role.get(name, "g") == "g" else oc.d_lr
            if oc.kind == "rmsprop":
                opt = torch.optim.RMSprop(param_groups(net), lr=lr * c, alpha=oc.alpha ** c,
                                          eps=oc.eps)
            else:
                opt = torch.optim.Adam(param_groups(net), lr=lr * c,
                                       betas=(oc.beta1 ** c, oc.beta2 ** c), eps=oc.eps)
            if name in clipped:
                opt.register_step_post_hook(_clamp_after_step(clipped[name]))
            out[name] = opt
        return out

    def learning_rates(self, images_seen: int) -> dict[str, float] | None:
        """Per network, a factor on its base learning rate at ``images_seen`` (None: constant)."""
        return None

    # ------------------------------------------------------------------------------ the step

    def phases(self) -> list[PhaseSpec]:
        raise NotImplementedError

    def stage(self, images_seen: int) -> Phase:
        """Resolution and fade alpha after ``images_seen`` images (fixed by default)."""
        return Phase(self.mc.resolution, 1.0)

    def streams(self) -> dict[str, Stream]:
        """The data streams, by name; the first is the primary one (``Trainer.data``)."""
        dc = self.cfg.data
        return {"data": Stream(dc.shards)}

    def micro_batch(self, batches: Mapping[str, Any], svc: Services) -> Any:
        """One micro-batch of inputs from one batch of each stream (on the device)."""
        raise NotImplementedError

    def ema_beta(self, beta: float) -> float:
        """The averaging weight of this step (``beta`` from train.ema_*)."""
        return beta if self.averaged else 0.0

    # ---------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The family's own training state (tensors equal on every rank), for the checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()`` in place."""
        for key, value in self.state_dict().items():
            value.copy_(state[key])

    # ------------------------------------------------------------------------------- sampling

    def sample_inputs(self) -> Any:
        """Fixed inputs of the sample grids (None until the family has seen data)."""
        return None

    def samples(self, nets: Mapping[str, nn.Module], inputs: Any, stage: Phase) -> torch.Tensor:
        """The images of a sample grid (N, C, H, W) in [-1, 1]."""
        raise NotImplementedError

    def grid_columns(self, num: int) -> int | None:
        """Images per row of a grid of ``num`` (None: a square grid)."""
        return None

    def write_samples(self, images: torch.Tensor, paths: list[Path]) -> dict[str, float]:
        """Save a grid at each of ``paths``; scalars to log with it."""
        for p in paths:
            save_grid(images, p, ncols=self.grid_columns(images.shape[0]))
        return {}

    def generate(self, nets: Mapping[str, nn.Module], num: int, seed: int, stage: Phase,
                 options: dict) -> torch.Tensor:
        """``num`` images for `scalegan generate` (options: label, embedding, stages...)."""
        raise ValueError(f"model.arch={self.arch} does not generate from noise; give --input")

    def from_images(self, nets: Mapping[str, nn.Module], images: torch.Tensor,
                    options: dict) -> torch.Tensor:
        """`scalegan generate --input`: images (N, C, R, R) in [-1, 1] -> output images."""
        raise ValueError(f"--input: model.arch={self.arch} does not take input images")

    def input_resolution(self, options: dict) -> int:
        """Side of the images ``from_images`` takes."""
        return self.mc.resolution

    def real_logits(self, nets: Mapping[str, nn.Module], images: torch.Tensor,
                    stage: Phase) -> torch.Tensor | None:
        """D's logits of real ``images`` (already augmented) at ``stage``, for ``d/holdout``;
        None when the family has no such single call."""
        return None

    def evaluate(self, nets: Mapping[str, nn.Module], env, ec, stage: Phase) -> dict[str, float]:
        """The family's own metrics (``metrics``) for `scalegan eval` and periodic evaluation,
        on every rank."""
        raise NotImplementedError


def clamp_weights(params, c: float) -> None:
    """Clamp every tensor of ``params`` to [-c, c] in place."""
    with torch.no_grad():
        for p in params:
            p.clamp_(-c, c)


def _clamp_after_step(c: float):
    def hook(optimizer, args, kwargs):
        clamp_weights((p for group in optimizer.param_groups for p in group["params"]), c)
    return hook


def spectral_normalise(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018, torch's parametrization: one power iteration
    per training forward) of every convolution, transposed convolution, linear layer and label
    embedding (the projection discriminator normalises its embedding too) of
    ``module``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d, nn.Embedding)):
            spectral_norm(m)
        elif isinstance(m, (nn.ConvTranspose2d,)):
            spectral_norm(m, dim=1)


def full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when autocast left it in bf16 / fp16; otherwise as it is (a float64 run
    keeps float64)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
