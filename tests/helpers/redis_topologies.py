"""Real Redis topologies for the tests, started from the same redis-server binary the service uses.

- `RedisClusterSet`: three masters with cluster mode on, slots assigned and joined with CLUSTER ADDSLOTS
  and CLUSTER MEET through redis-py (works with any redis-server >= 6, with or without redis-cli).
- `SentinelSet`: a master, a replica of it, and one `redis-server --sentinel` monitoring the master
  (quorum 1).
- `TlsRedis`: a server listening with TLS only (its unix socket stays plain, for readiness checks).

The cluster and the Sentinel set also come with TLS (`tls=Certificates`): clients, replication, the
cluster bus and the sentinel's links all use TLS; each server keeps a plain port on 127.0.0.1 that only
the fixtures use (to form the cluster, to check readiness, to flush). Certificates are a throwaway CA
and a server certificate for 127.0.0.1 made with the `openssl` command; TLS tests are skipped, with the
reason, when the redis-server was built without TLS or there is no `openssl`.

Everything waits on readiness by polling with a deadline and is torn down by `stop()`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sobot_panel.redis import EmbeddedRedis, find_redis_server, stop_process

CLUSTER_SLOTS = 16_384
CLUSTER_BUS_OFFSET = 10_000
SENTINEL_SERVICE = "panelmaster"
QUICK = ["--appendonly", "no"]  # these servers hold test data only


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    """Poll `check` until it returns True; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def free_port(*, bus_offset: int | None = None) -> int:
    """A free TCP port on 127.0.0.1; with `bus_offset`, one whose port + offset is free too (cluster bus)."""
    for _ in range(200):
        with contextlib.ExitStack() as stack:
            probe = stack.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if bus_offset is None:
                return port
            if port + bus_offset > 65_535:
                continue
            bus = stack.enter_context(socket.socket())
            try:
                bus.bind(("127.0.0.1", port + bus_offset))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair found")


# --- TLS material --------------------------------------------------------------------------------


class TlsUnavailable(RuntimeError):
    """The redis-server binary or the host cannot do TLS (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path

    def server_args(self, *, replication: bool = False, cluster: bool = False) -> list[str]:
        args = ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca),
                "--tls-auth-clients", "no"]  # fmt: skip
        if replication:
            args += ["--tls-replication", "yes"]
        if cluster:
            args += ["--tls-cluster", "yes"]
        return args


def check_tls_support(binary: str) -> None:
    """Raise `TlsUnavailable` when this redis-server was built without TLS.

    A build with TLS rejects a missing certificate file and exits at once; one without it rejects the
    `tls-port` directive itself. Either way the probe exits at once, so no process is left behind.
    """
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    output = (probe.stdout + probe.stderr).decode(errors="replace")
    if "Bad directive" in output:
        raise TlsUnavailable(f"{binary} was built without TLS support (it rejects tls-port)")


def make_certificates(root: Path) -> Certificates:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it (`openssl` CLI)."""
    check_tls_support(find_redis_server())
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsUnavailable("no openssl command to make a test certificate")
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (root / name for name in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                            "server.pem"))  # fmt: skip
    ext = root / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
         "-days", "2", "-subj", "/CN=sobot-panel test CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(cert), "-days", "2", "-extfile", str(ext)],
    ]  # fmt: skip
    for step in steps:
        result = subprocess.run(step, capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            raise TlsUnavailable(f"openssl failed: {result.stderr.decode(errors='replace').strip()[-200:]}")
    return Certificates(ca=ca, cert=cert, key=key)


def _answers_over_tls(port: int, certificates: Certificates) -> bool:
    with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certificates.ca),
                     socket_timeout=1) as client:  # fmt: skip
        return bool(client.ping())


# --- cluster -------------------------------------------------------------------------------------


class RedisClusterSet:
    """Three cluster-enabled masters owning a third of the slots each; no replicas.

    With `tls`, clients and the cluster bus use TLS (`tls-cluster yes`): the nodes announce their TLS
    ports to TLS clients, and the bus listens 10,000 above the TLS port.
    """

    def __init__(self, root: Path, size: int = 3, *, tls: Certificates | None = None) -> None:
        self.tls = tls
        self.nodes: list[EmbeddedRedis] = []
        self.client_ports: list[int] = []
        for index in range(size):
            node_dir = root / f"node-{index}"
            args = [*QUICK, "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "5000"]  # fmt: skip
            if tls is None:
                port = free_port(bus_offset=CLUSTER_BUS_OFFSET)
                self.client_ports.append(port)
            else:
                port, tls_port = free_port(), free_port(bus_offset=CLUSTER_BUS_OFFSET)
                args += ["--tls-port", str(tls_port), *tls.server_args(replication=True, cluster=True)]
                self.client_ports.append(tls_port)
            self.nodes.append(EmbeddedRedis(node_dir, port=port, extra_args=args))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where clients of the service connect: the TLS ports with `tls`."""
        return [("127.0.0.1", port) for port in self.client_ports]

    @property
    def url(self) -> str:
        """The service's URL form for this cluster: every node as a seed (the CA named in it with `tls`)."""
        seeds = ",".join(f"{host}:{port}" for host, port in self.addresses)
        if self.tls is None:
            return f"redis+cluster://{seeds}"
        return f"rediss+cluster://{seeds}?ssl_ca_certs={self.tls.ca}"

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise

    def _plain_clients(self) -> list[redis.Redis]:
        return [redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True) for node in self.nodes]

    def _form(self) -> None:
        clients = self._plain_clients()
        try:
            share = CLUSTER_SLOTS // len(clients)
            for index, client in enumerate(clients):
                first = index * share
                last = CLUSTER_SLOTS - 1 if index == len(clients) - 1 else first + share - 1
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
            for host, port in self.addresses[1:]:  # the bus is 10,000 above the port given here
                clients[0].execute_command("CLUSTER MEET", host, port)
            wait_for("the cluster did not reach cluster_state:ok", lambda: self._formed(clients), 30.0)
        finally:
            for client in clients:
                client.close()

    def _formed(self, clients: list[redis.Redis]) -> bool:
        for client in clients:
            info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
            state = (info.get("cluster_state"), info.get("cluster_known_nodes"), info.get("cluster_slots_assigned"))
            if state != ("ok", str(len(clients)), str(CLUSTER_SLOTS)):
                return False
        return True

    def kill(self) -> None:
        """SIGKILL every node, as a crash of the whole cluster would."""
        for node in self.nodes:
            node.kill()

    def restart(self) -> None:
        """Start the nodes again: they read their nodes.conf, so the same cluster forms again."""
        for node in self.nodes:
            node.start()
        clients = self._plain_clients()
        try:
            wait_for("the restarted cluster did not reach cluster_state:ok", lambda: self._formed(clients), 30.0)
        finally:
            for client in clients:
                client.close()

    def flush(self) -> None:
        for client in self._plain_clients():
            with client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# --- sentinel ------------------------------------------------------------------------------------


class SentinelProcess:
    """`redis-server <conf> --sentinel` monitoring one master (quorum 1); with `tls`, on a TLS port too."""

    def __init__(self, root: Path, master: tuple[str, int], *, tls: Certificates | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.master = master
        self.service = SENTINEL_SERVICE
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "sentinel.log"

    def start(self, timeout: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "sentinel.conf"  # the sentinel rewrites its own config: a file of its own
        host, port = self.master
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.root}", "daemonize no", f"logfile {self.log_path}",
                 f"sentinel monitor {self.service} {host} {port} 1",
                 f"sentinel down-after-milliseconds {self.service} 5000"]  # fmt: skip
        if self.tls is not None:  # the same options as on the command line, as config lines
            args = ["--tls-port", str(self.tls_port), *self.tls.server_args(replication=True)]
            lines += [f"{name.removeprefix('--')} {value}" for name, value in zip(args[::2], args[1::2], strict=True)]
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL, start_new_session=True
        )

        def knows_master() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sentinel exited with code {self.process.returncode}: {self.log_tail()}")
            with redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=1) as client:
                master = client.sentinel_master(self.service)
                # the sentinel has reached the master (over TLS with `tls`) and heard of its replica
                return master["port"] == port and not master["is_sdown"] and master["num-slaves"] >= 1

        try:
            wait_for("the sentinel did not report its master", knows_master, timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        stop_process(process, timeout)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class SentinelSet:
    """A master, one replica and one sentinel: the smallest setup where "reach the master" means something.

    With `tls`, the sentinel monitors the master's TLS port, the replica replicates over TLS, and the
    service's URL names the sentinel's TLS port (the CA comes from PANEL_REDIS_TLS_CA).
    """

    def __init__(self, root: Path, *, tls: Certificates | None = None) -> None:
        self.tls = tls
        # no diskless-sync delay: the replica is in sync at once instead of after 5 s
        master_args = [*QUICK, "--repl-diskless-sync-delay", "0"]
        replica_args = list(QUICK)
        self.master_tls_port: int | None = None
        self.replica_tls_port: int | None = None
        if tls is not None:
            self.master_tls_port, self.replica_tls_port = free_port(), free_port()
            master_args += ["--tls-port", str(self.master_tls_port), *tls.server_args(replication=True)]
            replica_args += ["--tls-port", str(self.replica_tls_port), *tls.server_args(replication=True)]
        self.master = EmbeddedRedis(root / "master", port=0, extra_args=master_args)
        master_port = self.master_tls_port or int(self.master.port or 0)
        replica_args += ["--replicaof", "127.0.0.1", str(master_port)]
        self.replica = EmbeddedRedis(root / "replica", port=0, extra_args=replica_args)
        self.sentinel = SentinelProcess(root / "sentinel", ("127.0.0.1", master_port), tls=tls)

    @property
    def url(self) -> str:
        if self.tls is None:
            return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.sentinel.service}/0"
        return f"rediss+sentinel://127.0.0.1:{self.sentinel.tls_port}/{self.sentinel.service}/0"

    def start(self) -> None:
        try:
            self.master.start()
            self.replica.start()
            with redis.Redis(host="127.0.0.1", port=self.replica.port, decode_responses=True) as replica:
                wait_for(
                    "the replica did not sync with the master",
                    lambda: replica.info("replication").get("master_link_status") == "up",
                )
            self.sentinel.start()
        except BaseException:
            self.stop()
            raise

    def flush(self) -> None:
        with redis.Redis(host="127.0.0.1", port=self.master.port) as client:
            client.flushall()

    def stop(self) -> None:
        self.sentinel.stop()
        self.replica.stop()
        self.master.stop()


# --- one TLS server ------------------------------------------------------------------------------


class TlsRedis:
    """A redis-server that accepts TCP only over TLS (`--port 0 --tls-port N`)."""

    def __init__(self, root: Path, certificates: Certificates) -> None:
        self.certificates = certificates
        self.tls_port = free_port()
        self.server = EmbeddedRedis(
            root / "server",
            port=None,
            extra_args=[*QUICK, "--tls-port", str(self.tls_port), *certificates.server_args()],
        )

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def start(self) -> None:
        self.server.start()
        try:
            wait_for("the TLS port did not answer", lambda: _answers_over_tls(self.tls_port, self.certificates))
        except BaseException:
            self.stop()
            raise

    def flush(self) -> None:
        with redis.Redis(unix_socket_path=str(self.server.socket_path)) as client:
            client.flushall()

    def stop(self) -> None:
        self.server.stop()


# --- fixtures (session-wide: each topology starts once, on first use, and stops at the end) ------


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    try:
        return make_certificates(tmp_path_factory.mktemp("certs"))
    except TlsUnavailable as reason:
        pytest.skip(str(reason))


@contextlib.contextmanager
def _running(topology: RedisClusterSet | SentinelSet | TlsRedis) -> Iterator[None]:
    topology.start()
    try:
        yield
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet(tmp_path_factory.mktemp("cluster"))
    with _running(cluster):
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_certificates: Certificates
) -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet(tmp_path_factory.mktemp("cluster-tls"), tls=tls_certificates)
    with _running(cluster):
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    """A cluster of this test's own, which it may kill and restart."""
    cluster = RedisClusterSet(tmp_path / "own-cluster")
    with _running(cluster):
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    setup = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    with _running(setup):
        yield setup


@pytest.fixture(scope="session")
def redis_sentinel_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_certificates: Certificates
) -> Iterator[SentinelSet]:
    setup = SentinelSet(tmp_path_factory.mktemp("sentinel-tls"), tls=tls_certificates)
    with _running(setup):
        yield setup


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory, tls_certificates: Certificates) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("tls"), tls_certificates)
    with _running(server):
        yield server
