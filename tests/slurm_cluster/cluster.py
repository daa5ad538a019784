"""A throwaway two-node Slurm cluster on this one machine, for the Slurm tests and by hand.

    python tests/slurm_cluster/cluster.py up DIR     # install the packages if missing, start it
    export SLURM_CONF=DIR/slurm.conf                # sbatch / squeue / scancel now talk to it
    python tests/slurm_cluster/cluster.py down DIR   # stop every daemon, remove what `up` installed

Everything lives in DIR: the configuration (found through SLURM_CONF, nothing in /etc/slurm),
a munge key and socket of its own, state, spool, logs and pid files. Two emulated nodes, n1
and n2, are two `slurmd -N` daemons on 127.0.0.1 with a port each. The ports are picked free
at start, so a cluster never collides with a Slurm or a second cluster already on the host.

Debian's packages put `srun` on PATH, which makes every Lightning Trainer started outside
Slurm warn. So `down` purges the packages that `up` installed and leaves the machine as it
found it; packages that were already there stay.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODES = ("n1", "n2")
# One cluster at a time per machine: package install/removal and two clusters' worth of
# training on two cores would trip over each other. Waiters give up after LOCK_WAIT_S.
LOCK_PATH = Path("/run/lock/cascade-slurm-cluster.lock")
LOCK_WAIT_S = 900

SLURM_CONF = """\
ClusterName=cascade-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may run again (default 120 s;
# values below 5 are rejected and silently become 120).
AuthInfo=socket={dir}/munge/munge.socket,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
# Seconds between SIGTERM and SIGKILL when a job ends or is requeued (default 30).
KillWait=5
# Both nodes report this host's CPUs; accept them whatever the host has.
SlurmdParameters=config_overrides
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus} State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port={n2_port} CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the cluster (not root, packages not installable, lock held)."""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-1000:]}")
    return result


def _installed() -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${binary:Package} ${db:Status-Status}\\n"],
        text=True, capture_output=True,
    ).stdout
    # dpkg may print "name:arch"; compare plain names.
    return {line.split()[0].split(":")[0] for line in out.splitlines() if line.endswith(" installed")}


def install_packages() -> list[str]:
    """Install the Slurm and munge packages if missing; return every package this added."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the Slurm tests start daemons and install packages: run as root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("apt-get not found: the Slurm cluster needs Debian's packages")
    before = _installed()
    if set(PACKAGES) <= before:
        return []
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        # A fresh machine has no package lists yet; with stale ones the install may 404.
        _run(apt + ["update"], env=env, timeout=300)
        _run(apt + ["install", "--no-install-recommends", *PACKAGES], env=env, timeout=600)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        raise ClusterUnavailable(f"apt-get could not install {' '.join(PACKAGES)}: {error}")
    return sorted(_installed() - before)


def remove_packages(packages: list[str]) -> None:
    """Purge packages that install_packages added (their config and munge key with them)."""
    if packages:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-y", "-q", "purge", *packages], env=env, timeout=600)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait(predicate, deadline_s: float, what: str, interval_s: float = 0.2):
    end = time.monotonic() + deadline_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class SlurmCluster:
    """The cluster living in `directory`; `env` is what a client command needs."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory).resolve()
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ---- bring-up -------------------------------------------------------------------------

    def start(self, boot_timeout_s: float = 60) -> None:
        """Write the config, start munged, slurmctld and one slurmd per node; wait for idle."""
        # munged runs as the munge user: it refuses a key or socket in a directory others can
        # write to, and wants every directory down to its socket open to all for lookup.
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        munge = self.dir / "munge"
        munge.mkdir(mode=0o755, exist_ok=True)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (munge, key):
            shutil.chown(path, "munge", "munge")
        for sub in ("state", *(f"spool/{n}" for n in NODES)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

        ctld_port, n1_port, n2_port = _free_ports(3)
        self.conf.write_text(SLURM_CONF.format(
            dir=self.dir, ctld_port=ctld_port, n1_port=n1_port, n2_port=n2_port,
            cpus=os.cpu_count() or 1,
        ))

        _run(["runuser", "-u", "munge", "--", "munged",
              f"--key-file={key}", f"--socket={munge}/munge.socket",
              f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
              f"--seed-file={munge}/munged.seed"])
        # slurmctld and slurmd daemonise and write their pid files themselves.
        _run(["slurmctld"], env=self.env)
        for node in NODES:
            # Always -N: a plain slurmd would take the first node's name and kill its daemon.
            _run(["slurmd", "-N", node], env=self.env)
        _wait(lambda: self.node_states() == {n: "idle" for n in NODES}, boot_timeout_s,
              f"nodes {', '.join(NODES)} to be idle (see {self.dir}/*.log)", interval_s=0.5)

    def node_states(self) -> dict[str, str]:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env,
                             text=True, capture_output=True).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    # ---- teardown -------------------------------------------------------------------------

    def pid_files(self) -> list[Path]:
        # Nodes first, the controller next, munge last: each needs the ones after it to stop cleanly.
        return [*(self.dir / f"slurmd-{n}.pid" for n in NODES),
                self.dir / "slurmctld.pid", self.dir / "munge" / "munged.pid"]

    def stop(self, deadline_s: float = 60) -> None:
        """Cancel every job, then end each daemon by its pid file; nothing is left running."""
        if self.conf.exists() and (self.dir / "slurmctld.pid").exists():
            # slurmstepd outlives a stopped slurmd by design, so jobs must end first.
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
            try:
                _wait(lambda: not self.squeue_ids(), deadline_s, "all jobs to end", interval_s=0.5)
            except TimeoutError:
                print("warning: jobs still listed at teardown; stopping the daemons anyway",
                      file=sys.stderr)
        for pid_file in self.pid_files():
            try:
                pid = int(pid_file.read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            try:
                _wait(lambda: not _pid_alive(pid), deadline_s / 2, f"{pid_file.name} ({pid}) to exit")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)

    def squeue_ids(self) -> list[str]:
        result = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env,
                                text=True, capture_output=True)
        # If the controller is gone there is nothing it could still be running.
        return result.stdout.split() if result.returncode == 0 else []


def lock(wait_s: float = LOCK_WAIT_S):
    """Take the machine-wide cluster lock; the returned file holds it until closed."""
    handle = open(LOCK_PATH, "w")
    try:
        _wait(lambda: _try_flock(handle), wait_s, f"the lock {LOCK_PATH} (another Slurm test cluster)", 1)
    except TimeoutError as error:
        handle.close()
        raise ClusterUnavailable(str(error))
    return handle


def _try_flock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    command, directory = argv
    cluster = SlurmCluster(directory)
    record = cluster.dir / "installed-packages.txt"
    if command == "up":
        with lock():
            added = install_packages()
        cluster.dir.mkdir(parents=True, exist_ok=True)
        record.write_text("\n".join(added))
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
        if record.exists():
            with lock():
                remove_packages(record.read_text().split())
            record.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
