"""Two nodes on one machine: two network namespaces joined by a veth pair, each running the
project's launcher (launch/torchrun.sh, torchrun --nnodes=2 with a c10d rendezvous across the
veth addresses), training a few steps with gloo. The addresses exist only inside the namespaces,
which are deleted afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_shards

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@pytest.fixture
def two_namespaces():
    if os.geteuid() != 0:
        raise RuntimeError("network namespaces need root")
    tag = f"{os.getpid() % 10000}"
    ns = [f"sg{tag}a", f"sg{tag}b"]
    veth = [f"sg{tag}va", f"sg{tag}vb"]
    addrs = ["10.231.7.1", "10.231.7.2"]
    try:
        for name in ns:
            _ip("netns", "add", name)
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for name, dev, addr in zip(ns, veth, addrs, strict=True):
            _ip("link", "set", dev, "netns", name)
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield list(zip(ns, veth, addrs, strict=True))
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def test_two_nodes_train_to_the_same_parameters(two_namespaces, tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, num_shards=4, per_shard=8, resolution=16)
    args = [
        "configs/demo_faces32_pggan.yaml", f"data.shards={shards}", f"runs_dir={tmp_path}",
        "name=two_nodes", "parallel.strategy=ddp", "model.resolution=16",
        "model.channel_base=128", "model.channel_max=16", "model.latent_dim=16",
        "model.img_channels=3", "train.batch_size=8", "train.total_kimg=10",
        "log.wandb=disabled", "log.progress=false", "--max-steps", "4",
    ]
    host_addr = two_namespaces[0][2]
    procs = []
    for ns, dev, addr in two_namespaces:
        env = dict(os.environ, NNODES="2", NPROC="1", RDZV_ENDPOINT=f"{host_addr}:29411",
                   LOCAL_ADDR=addr,
                   RDZV_ID=f"two-nodes-{os.getpid()}", GLOO_SOCKET_IFNAME=dev,
                   SCALEGAN_PYTHON=sys.executable, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, str(ROOT / "launch" / "torchrun.sh"), *args], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True))
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # a hang: take the launcher and its workers down
                os.killpg(p.pid, signal.SIGKILL)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert "2 rank(s), strategy ddp" in "".join(err for _, err in outputs)

    latest = tmp_path / "two_nodes" / "checkpoints" / "latest"
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    ranks = [json.loads((latest / f"rank_{r:05d}.json").read_text()) for r in range(2)]
    # one rank per node; data-parallel replicas end on bit-identical weights
    assert ranks[0]["weights_crc32"] == ranks[1]["weights_crc32"]
    # every rank file holds every rank's data position; each node read its own share
    assert ranks[0]["data"] == ranks[1]["data"]
    positions = ranks[0]["data"]["data"]["ranks"]
    assert [p["rank"] for p in positions] == [0, 1] and positions[0]["roles"] != positions[1][
        "roles"]
