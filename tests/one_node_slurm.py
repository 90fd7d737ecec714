"""The fixture slurm_cluster: a real one-node SLURM cluster (slurmctld, slurmd, and munged unless
one runs) on this machine, for tests that submit jobs. tests/conftest.py registers it. Its
config, state, logs and munge socket live in a new temporary directory; its ports are free ones.
.ci/run installs the Debian packages; the fixture skips, saying why, where they are missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "SPECIAL_EXIT",
    }
)
PARTITION = "debug"
INSTALL_HINT = "apt-get install slurmctld slurmd munge slurm-client"
# Also the delay before a requeued job may start again (BeginTime = requeue + this); the default is
# 120 s and Slurm rejects values below 5 (falling back to 120 with only an error in the log).
CRED_EXPIRE = 5
TOOLS = (
    "slurmctld",
    "slurmd",
    "munged",
    "munge",
    "unmunge",
    "sbatch",
    "srun",
    "squeue",
    "scontrol",
    "scancel",
    "sinfo",
)


@dataclass
class SlurmCluster:
    """What `slurm_cluster` yields: pass `env` to every sbatch/squeue/scontrol/scancel call."""

    env: dict[str, str]
    partition: str
    cpus: int
    node: str
    conf: Path
    tmpdir: Path
    startup_s: float = 0.0  # fixture start -> node idle
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command with this cluster's env."""
        return subprocess.run(
            args, env=self.env, capture_output=True, text=True, check=check, timeout=30
        )

    def sbatch(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> int:
        """Submit with `sbatch --parsable ARGS` (partition preset) and return the job id. The job
        runs in env (default: self.env), as in the environment sbatch is called from."""
        out = subprocess.run(
            ["sbatch", "--parsable", "-p", self.partition, *args], cwd=cwd, env=env or self.env,
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return int(out.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict[str, str]:
        """Fields of `scontrol show job -o ID` as a dict ({} once the record is gone)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if out.returncode != 0:
            return {}
        # Values with spaces (Command, a Reason text) come cut: not the fields read here.
        return dict(token.split("=", 1) for token in out.stdout.split() if "=" in token)

    def wait_state(
        self, job_id: int, states: frozenset[str], timeout: float = 60, min_restarts: int = 0
    ) -> str:
        """Poll until the job is in one of states with Restarts >= min_restarts; its state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            state, restarts = info.get("JobState", ""), int(info.get("Restarts", "0"))
            if state in states and restarts >= min_restarts:
                return state
            if state == "":
                raise RuntimeError(f"job {job_id} unknown to slurmctld (MinJobAge passed?)")
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {state!r} after {timeout} s, not {sorted(states)}")

    def log_tails(self, lines: int = 15) -> str:
        """Last lines of the daemon logs, for failure messages."""
        return _log_tails(self.tmpdir, lines)


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    """True if something accepts TCP connections on localhost:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 15) -> str:
    """Last lines of a file, or a note that it does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} missing)"


def _log_tails(tmpdir: Path, lines: int = 15) -> str:
    """Tails of the daemon logs; a daemon's stderr stands in when it died before opening its log."""
    # In the foreground (-D/-F) daemons copy every log line to stderr, so show one of the two.
    paths = []
    for err in sorted(tmpdir.glob("*.stderr")):
        log = err.with_suffix(".log")
        paths.append(log if log.exists() else err)
    return "\n".join(f"--- {p.name}:\n{_tail(p, lines)}" for p in paths)


def _munge_works(socket_path: str | None = None) -> bool:
    """True if `munge -n | unmunge` succeeds against the given (or default) socket."""
    opt = ["-S", socket_path] if socket_path else []
    try:
        cred = subprocess.run(["munge", "-n", *opt], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        return (
            subprocess.run(
                ["unmunge", *opt], input=cred.stdout, capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munged(tmpdir: Path) -> subprocess.Popen:
    """Start a private munged (foreground) with socket/pid/log/seed in tmpdir; skip on failure."""
    sock, log = tmpdir / "munge.sock", tmpdir / "munged.log"
    # --force: /etc/munge/munge.key is owned by the munge user, which munged calls insecure as root.
    with open(tmpdir / "munged.stderr", "wb") as err:
        proc = subprocess.Popen(
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={sock}",
                f"--log-file={log}",
                f"--pid-file={tmpdir / 'munged.pid'}",
                f"--seed-file={tmpdir / 'munged.seed'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        if sock.exists() and _munge_works(str(sock)):
            return proc
        time.sleep(0.1)
    _stop(proc)
    pytest.skip(f"munged did not start: {_log_tails(tmpdir)}")


def _write_conf(
    tmpdir: Path, node: str, cpus: int, auth_info: str, ctld_port: int, slurmd_port: int
) -> Path:
    """Write slurm.conf for a one-node cluster whose files all live in tmpdir."""
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf = tmpdir / "slurm.conf"
    conf.write_text(f"""\
ClusterName=test
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
{auth_info}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={tmpdir}/state
SlurmdSpoolDir={tmpdir}/spool
SlurmctldPidFile={tmpdir}/slurmctld.pid
SlurmdPidFile={tmpdir}/slurmd.pid
SlurmctldLogFile={tmpdir}/slurmctld.log
SlurmdLogFile={tmpdir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# Nothing wakes the scheduler when a requeued job's BeginTime passes; only the periodic passes
# (backfill every 30 s, main loop every 60 s by default) start it. Run them every 1-2 s instead.
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
JobRequeue=1
KillWait=30
# Finished jobs stay visible to `scontrol show job` this long (no sacct here); keep > poll gaps.
MinJobAge=120
NodeName={node} CPUs={cpus} RealMemory={mem_mb // 2} State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    (tmpdir / "state").mkdir()
    (tmpdir / "spool").mkdir()
    return conf


def _stop(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM one process we started, wait, then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _node_state(env: dict[str, str], node: str) -> str:
    """sinfo's state for the node ("" if sinfo fails)."""
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-n", node, "-o", "%T"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def _cancel_all(env: dict[str, str], timeout: float = 45) -> None:
    """scancel every job in the cluster and wait (up to KillWait+) until squeue is empty."""

    def job_ids() -> list[str]:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=10
        )
        return out.stdout.split()

    ids = job_ids()
    if not ids:
        return
    subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=10)
    deadline = time.monotonic() + timeout
    while job_ids() and time.monotonic() < deadline:
        time.sleep(0.5)


def _missing_reason() -> str | None:
    """Why this machine cannot host the cluster, or None if it can."""
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        return f"{', '.join(missing)} not installed: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "not root: slurmd must run as root here (it launches jobs as their users)"
    return None


def _clean_env(conf: Path) -> dict[str, str]:
    """os.environ minus SLURM_* leftovers (pytest may itself run inside a job), plus SLURM_CONF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/usr/bin"
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start munged (unless a working one runs), slurmctld and slurmd; yield a SlurmCluster."""
    t0 = time.monotonic()
    if reason := _missing_reason():
        pytest.skip(reason)
    tmpdir = Path(tempfile.mkdtemp(prefix="slurm-test-"))  # short path: unix socket limit
    tmpdir.chmod(0o755)  # munged wants its socket dir searchable by all (else it warns)
    procs: dict[str, subprocess.Popen] = {}
    cluster: SlurmCluster | None = None
    try:
        auth_opts = [f"cred_expire={CRED_EXPIRE}"]
        if not _munge_works():
            if not Path("/etc/munge/munge.key").exists():
                pytest.skip("no /etc/munge/munge.key: " + INSTALL_HINT)
            procs["munged"] = _start_munged(tmpdir)
            auth_opts.append(f"socket={tmpdir / 'munge.sock'}")
        node = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        ctld_port, slurmd_port = _free_ports(2)
        conf = _write_conf(
            tmpdir, node, cpus, "AuthInfo=" + ",".join(auth_opts), ctld_port, slurmd_port
        )
        env = _clean_env(conf)
        cluster = SlurmCluster(
            env=env,
            partition=PARTITION,
            cpus=cpus,
            node=node,
            conf=conf,
            tmpdir=tmpdir,
            procs=procs,
        )
        # -D keeps the daemons in the foreground so the Popen pids are the daemons' pids.
        for name, args in (
            ("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)]),
            ("slurmd", ["slurmd", "-D", "-f", str(conf)]),
        ):
            with open(tmpdir / f"{name}.stderr", "wb") as err:
                procs[name] = subprocess.Popen(
                    args, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
                )
        deadline = time.monotonic() + 20
        state = ""
        while time.monotonic() < deadline:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                pytest.skip(f"{', '.join(dead)} did not start:\n{cluster.log_tails()}")
            # sinfo blocks for seconds retrying while slurmctld is not listening yet.
            state = _node_state(env, node) if _port_open(ctld_port) else ""
            if state == "idle":
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"node {node} not idle after 20s (state {state!r}):\n{cluster.log_tails()}")
        cluster.startup_s = time.monotonic() - t0
        yield cluster
    finally:
        if cluster is not None and procs.get("slurmctld") and procs["slurmctld"].poll() is None:
            _cancel_all(cluster.env)
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            _stop(procs.get(name))
        shutil.rmtree(tmpdir, ignore_errors=True)
