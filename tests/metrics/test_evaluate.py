"""`scalegan eval` and periodic evaluation: against a direct computation, across ranks, and the
missing-weights error."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from scalegan.cli import main
from scalegan.config import EvalConfig, config_from_dict, load_config
from scalegan.data.demo import pack_demo
from scalegan.data.pipeline import expand_shards
from scalegan.generate import load_generator
from scalegan.metrics.evaluate import evaluate
from scalegan.metrics.features import RandomConvFeatures, build_extractor
from scalegan.parallel.env import DistEnv
from scalegan.train.checkpoint import read_meta
from scalegan.train.schedule import Phase
from scalegan.train.trainer import Trainer

from parallel.spawn import run_ranks

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_faces32_pggan.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict[str, Path]:
    """The demo faces packed (4 shards of 25) and 30 steps of the demo config on them."""
    root = tmp_path_factory.mktemp("demo")
    pack_demo(root / "shards")
    assert main(["train", str(CONFIG), "--max-steps", "30", f"runs_dir={root / 'runs'}",
                 f"data.shards={root / 'shards'}", "log.wandb=disabled", "log.progress=false",
                 "checkpoint.every_kimg=100"]) == 0
    return {"shards": root / "shards", "run": root / "runs" / "demo_faces32"}


def decode_all(shards: Path, resolution: int) -> np.ndarray:
    """Every image of the shards, in shard order, box-averaged to ``resolution`` by hand."""
    images = []
    for url in expand_shards(str(shards)):
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read() if member.isfile() else b""
                if member.name.endswith(".png"):
                    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"),
                                     dtype=np.float64)
                elif member.name.endswith(".rgb"):  # raw uint8 HWC (the packer's small levels)
                    side = int(round((len(data) / 3) ** 0.5))
                    img = np.frombuffer(data, np.uint8).reshape(side, side, 3).astype(np.float64)
                else:
                    continue
                f = img.shape[0] // resolution
                img = img.reshape(resolution, f, resolution, f, 3).mean((1, 3))
                images.append(np.floor(img + 0.5))  # PIL's reduce rounds to uint8
    return np.stack(images)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def test_eval_prints_fid_kid_pr_equal_to_a_direct_computation(demo_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(demo_run["run"]), "--metrics", "fid,kid,pr", "--extractor",
                 "random", "--num-fake", "150", "--batch", "16", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("fid", "kid", "precision", "recall"):
        assert f"\n{name} " in printed
    got = json.loads(out.read_text())
    assert got["num_real"] == 100 and got["num_fake"] == 150

    # Reference: decode the shards by hand, generate in one batch, scipy's FID.
    meta = read_meta(demo_run["run"] / "checkpoints" / "latest")
    res = meta["phase"]["resolution"]
    G, _ = load_generator(demo_run["run"])
    z = torch.randn(150, G.latent_dim, generator=torch.Generator().manual_seed(0))
    extractor = RandomConvFeatures()
    with torch.no_grad():
        fake = extractor(G(z, res, meta["phase"]["alpha"])).numpy().astype(np.float64)
        real_images = torch.from_numpy(decode_all(demo_run["shards"], res)).float()
        real = extractor(real_images.permute(0, 3, 1, 2) / 127.5 - 1).numpy().astype(np.float64)
    # float32 features from batches of another size: round-off only
    assert got["fid"] == pytest.approx(scipy_fid(real, fake), rel=1e-4)
    assert math.isfinite(got["kid"]) and 0 <= got["precision"] <= 1 and 0 <= got["recall"] <= 1


def evaluate_on(env: DistEnv, run: Path, shards: Path, num_real: int) -> dict:
    meta = read_meta(run / "checkpoints" / "latest")
    cfg = config_from_dict(meta["config"])
    ec = EvalConfig(metrics="fid,kid,pr", extractor="random", num_fake=37, batch_size=8,
                    num_real=num_real, real=str(shards), kid_subset_size=20, kid_subsets=10)
    G, _ = load_generator(run)
    results, real = evaluate(G, cfg, Phase(**meta["phase"]), env,
                             build_extractor("random", device=env.device), ec=ec)
    return {**results, "real_features": torch.from_numpy(real.features)}


@pytest.mark.parametrize("num_real", [0, 60])
def test_two_ranks_give_the_numbers_of_one_process(demo_run, tmp_path, num_real):
    # 4 shards of 25 over 2 ranks; 37 generated images split 19 + 19 (the last one wraps)
    single = evaluate_on(DistEnv(), demo_run["run"], demo_run["shards"], num_real)
    ranks = run_ranks(2, evaluate_on, demo_run["run"], demo_run["shards"], num_real,
                      tmp_path=tmp_path)
    assert single["num_real"] == (num_real or 100) and single["num_fake"] == 37
    for result in ranks:
        # fp32 features of other batch splits: the convolutions' sums run in another order
        # (measured up to 1.4e-6 on unit-scale features)
        torch.testing.assert_close(result["real_features"], single["real_features"], rtol=0,
                                   atol=1e-5)
        for key in ("fid", "kid", "kid_std", "precision", "recall", "num_real", "num_fake"):
            assert result[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key


def test_missing_inception_weights_is_a_clear_error_not_a_download(demo_run, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SCALEGAN_INCEPTION_WEIGHTS", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    monkeypatch.setattr("socket.socket.connect", no_network)
    assert main(["eval", str(demo_run["run"])]) == 2
    err = capsys.readouterr().err
    assert "inception-2015-12-05.pt" in err and "SCALEGAN_INCEPTION_WEIGHTS" in err
    assert str(tmp_path / ".cache" / "scalegan") in err and "never downloads" in err
    assert "Traceback" not in err

    # training with periodic evaluation stops before its first step, not hours later
    assert main(["train", str(CONFIG), f"runs_dir={tmp_path / 'runs'}", "eval.every_kimg=1",
                 f"data.shards={demo_run['shards']}", "log.wandb=disabled"]) == 2
    assert "inception-2015-12-05.pt" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "demo_faces32" / "checkpoints").exists()


def test_periodic_eval_logs_and_keeps_the_best_checkpoint(demo_run, tmp_path):
    cfg = load_config(CONFIG, [
        f"runs_dir={tmp_path}", f"data.shards={demo_run['shards']}", "log.wandb=disabled",
        "log.progress=false", "eval.every_kimg=0.08", "eval.extractor=random",
        "eval.num_fake=40", "eval.metrics=fid,kid", "eval.kid_subset_size=20",
        "checkpoint.every_kimg=0.08", "checkpoint.keep=1"])
    trainer = Trainer(cfg)
    trainer.train(max_steps=25)  # 400 images: evaluations at 80, 160, ..., 400
    trainer.close()
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/fid" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 25]
    assert all(math.isfinite(r["eval/kid"]) for r in evals)
    best = json.loads((cfg.run_dir / "checkpoints" / "best.json").read_text())
    want = min(evals, key=lambda r: r["eval/fid"])
    assert best["metric"] == "fid" and best["value"] == want["eval/fid"]
    assert best["step"] == want["step"]
    link = cfg.run_dir / "checkpoints" / "best"
    assert link.resolve().name == f"step_{want['step']:09d}"
    assert (link / "meta.json").is_file()  # kept although checkpoint.keep=1
    kept = sorted(p.name for p in (cfg.run_dir / "checkpoints").glob("step_*"))
    assert kept == sorted({f"step_{want['step']:09d}", "step_000000025"})
