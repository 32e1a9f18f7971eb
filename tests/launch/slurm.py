"""A real one-machine Slurm cluster for the tests: Debian's slurm-wlm and munge, installed when
missing (the tests run as root), with its own slurm.conf, state and logs in a temp directory.

Where Slurm cannot be installed or started, ``SlurmCluster.start`` raises with the reason: the
tests that need it fail rather than pass.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """\
ClusterName=scalegan-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
# a requeued job may start again after cred_expire+1 s (default 120; values below 5 are rejected)
AuthInfo=cred_expire=5
# the main scheduler runs every 2 s (default 60), so a job is started soon after it becomes eligible
SchedulerParameters=sched_interval=2
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120),
                          **kw)


def ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("Slurm is not installed and installing it needs root")
    proc = _run("apt-get", "install", "-y", "slurm-wlm", "munge", timeout=600,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if proc.returncode != 0:
        raise RuntimeError(f"apt-get install slurm-wlm munge failed:\n{proc.stderr[-2000:]}")


def ensure_munge() -> None:
    if _run("pgrep", "-x", "munged").returncode == 0:
        return
    if not Path("/etc/munge/munge.key").exists():
        _run("mungekey", "--create", "--force")
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    proc = _run("runuser", "-u", "munge", "--", "/usr/sbin/munged")
    if proc.returncode != 0:
        raise RuntimeError(f"munged did not start: {proc.stderr}")


class SlurmCluster:
    """slurmctld + one slurmd (node ``localhost``, 2 CPUs) with state in ``directory``."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> SlurmCluster:
        ensure_installed()
        ensure_munge()
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONF.format(dir=self.dir, ctld_port=_free_port(),
                                         slurmd_port=_free_port()))
        for cmd in (["slurmctld", "-f", str(self.conf)],
                    ["slurmd", "-f", str(self.conf), "-N", "localhost"]):
            proc = _run(*cmd, env=self.env)
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd[0]} did not start: {proc.stderr}\n{self.logs()}")
        deadline = time.time() + 60
        while time.time() < deadline:
            out = _run("sinfo", "-h", "-o", "%T", env=self.env).stdout.strip()
            if out in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node never became idle (sinfo: {out!r})\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.dir.glob("*.log")))

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = _run(*cmd, env=self.env, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr}\n{self.logs()}")
        return proc

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState", "?")

    def wait(self, job_id: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout:.0f} s"
                           f"\n{self.logs()}")

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.dir / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(0.5)
