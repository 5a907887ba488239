"""Job authentication: with PLEXUS_AUTH_TOKEN (or PLEXUS_AUTH_FILE) the store and every peer
connection start with an HMAC-SHA256 challenge-response, no secret is published in the store,
and a client or peer without the token is refused while the job goes on; without a token the
job runs as before and `plexus info` says it is unauthenticated."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import plexus
from plexus import _C
from launch import run_ranks

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def test_hmac_is_libcrypto_s_hmac_sha256():
    # RFC 4231, test case 2, and a few more against Python's own hmac.
    assert _C._hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == \
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    for key, msg in [(b"", b""), (b"k" * 100, b"m" * 1000), (bytes(range(256)), b"\0x")]:
        assert _C._hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def _sum(rank, world):
    x = np.full(1000, rank + 1.0, np.float32)
    plexus.all_reduce(x)
    return float(x[0])


@pytest.mark.parametrize("transports", ["tcp", "shm,tcp"])
def test_a_job_with_a_token_runs(transports):
    env = {"PLEXUS_AUTH_TOKEN": TOKEN, "PLEXUS_TRANSPORTS": transports}
    assert run_ranks(3, _sum, env=env) == [6.0, 6.0, 6.0]


def test_the_token_may_come_from_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    env = {"PLEXUS_AUTH_FILE": str(path), "PLEXUS_TRANSPORTS": "tcp"}
    assert run_ranks(2, _sum, env=env) == [3.0, 3.0]


class _Recording:
    """A torch store that remembers every value set, to look at what the store holds."""

    def __init__(self, store, seen):
        self._store, self.seen = store, seen

    def set(self, key, value):
        self.seen[key] = bytes(value)
        self._store.set(key, value)

    def wait(self, keys, timeout):
        self._store.wait(keys, timeout)

    def get(self, key):
        return self._store.get(key)

    def add(self, key, delta):
        return self._store.add(key, delta)


def _published_secret(rank, world, path, token):
    import torch.distributed as dist

    if token:
        os.environ["PLEXUS_AUTH_TOKEN"] = token
    os.environ["PLEXUS_TRANSPORTS"] = "tcp"
    seen = {}
    plexus.init_process_group(store=_Recording(dist.FileStore(path, world), seen), rank=rank, world_size=world)
    total = _sum(rank, world)
    plexus.destroy_process_group()
    identity = [v for k, v in seen.items() if k.endswith("plexus/world/identity")]
    return total, identity[0][8:40] if identity else None


@pytest.mark.parametrize("token", ["", TOKEN])
def test_no_secret_is_published_with_a_token(tmp_path, token):
    out = run_ranks(2, _published_secret, str(tmp_path / "store"), token, join_group=False)
    assert [total for total, _ in out] == [3.0, 3.0]
    secret = out[0][1]  # rank 0 publishes the identity
    assert secret is not None and len(secret) == 32
    assert (secret == bytes(32)) == bool(token), secret.hex()


def _strangers_at_the_store(rank, world):
    from plexus.distributed import _state

    x = np.ones(10, np.float32)
    plexus.all_reduce(x)
    if rank != 0:
        plexus.barrier()
        plexus.all_reduce(x)
        return None
    port = _state.rendezvous.server.port
    found = {}
    # A raw client that asks for a key without authenticating: the server's hello, then closed.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        key = b"plexus/world/identity"
        s.sendall(bytes([2]) + struct.pack("<I", len(key)) + key + struct.pack("<Q", 8) + struct.pack("<q", 0))
        found["raw"] = _read_until_closed(s)
    # Plexus's own client with another token, and with none.
    for name, token in [("wrong", "not-the-token"), ("none", None)]:
        saved = os.environ.pop("PLEXUS_AUTH_TOKEN")
        if token:
            os.environ["PLEXUS_AUTH_TOKEN"] = token
        try:
            client = _C.TcpStoreClient("127.0.0.1", port, 10.0)
            client.get("plexus/world/identity", 5.0)
            found[name] = "no error"
        except RuntimeError as e:
            found[name] = str(e)
        finally:
            os.environ["PLEXUS_AUTH_TOKEN"] = saved
    plexus.barrier()
    plexus.all_reduce(x)  # the job goes on
    found["sum"] = float(x[0])
    return found


def test_a_client_without_the_token_reads_nothing_from_the_store():
    env = {"PLEXUS_AUTH_TOKEN": TOKEN, "PLEXUS_TIMEOUT": "60"}
    found = run_ranks(2, _strangers_at_the_store, env=env, init_method=f"tcp://127.0.0.1:{_free_port()}")[0]
    assert len(found["raw"]) == 36 and found["raw"][:4] == struct.pack("<I", 0x504C5853), found["raw"]
    assert "refused this rank's proof" in found["wrong"], found["wrong"]
    assert "not a store reply" in found["none"], found["none"]
    assert found["sum"] == 4.0


def _token_of_rank(rank, world, path, tokens):
    import torch.distributed as dist

    os.environ["PLEXUS_AUTH_TOKEN"] = tokens[rank]
    os.environ["PLEXUS_TRANSPORTS"] = "tcp"
    try:
        # torch's store, which does not authenticate: the peers still do.
        plexus.init_process_group(store=dist.FileStore(path, world), rank=rank, world_size=world, timeout=8)
        plexus.all_reduce(np.ones(4, np.float32))
        return "no error"
    except plexus.PlexusError as e:
        return f"{type(e).__name__}: {e}"


def test_a_peer_with_another_token_is_refused(tmp_path):
    out = run_ranks(2, _token_of_rank, str(tmp_path / "store"), [TOKEN, "another"], join_group=False, timeout=120)
    # Rank 0 dials rank 1, which refuses its proof.
    assert "PLEXUS_AUTH_TOKEN differs there" in out[0] and "rank 1" in out[0], out
    assert out[1] != "no error", out


def _token_on_one_rank(rank, world, path):
    import torch.distributed as dist

    if rank == 1:
        os.environ["PLEXUS_AUTH_TOKEN"] = TOKEN
    try:
        plexus.init_process_group(store=dist.FileStore(path, world), rank=rank, world_size=world, timeout=8)
        return "no error"
    except (ValueError, plexus.PlexusError) as e:
        return f"{type(e).__name__}: {e}"


def test_a_token_on_some_ranks_only_is_named_at_the_rendezvous(tmp_path):
    out = run_ranks(2, _token_on_one_rank, str(tmp_path / "store"), join_group=False, timeout=120)
    assert out[1].startswith("ValueError") and "has a job token" in out[1] and "rank 0 has none" in out[1], out


def _hello_gets_only_a_nonce(rank, world):
    from plexus.distributed import _state

    x = np.ones(4, np.float32)
    plexus.all_reduce(x)
    if rank == 0:
        comm = _state.world.comm
        hello = struct.pack("<IHHQii32s", 0x504C5848, 1, 0, comm.id, 1, 0, os.urandom(32))
        with socket.create_connection(("127.0.0.1", comm.listen_ports[0]), timeout=10) as s:
            s.sendall(hello)
            challenge = _read_exactly(s, 36)
            s.settimeout(0.5)
            try:
                extra = s.recv(64)  # nothing more before this side proves itself
            except socket.timeout:
                extra = b""
            s.settimeout(10)
            s.sendall(os.urandom(32))  # a proof made without the token
            rest = _read_until_closed(s)
    plexus.barrier()
    plexus.all_reduce(x)  # the job goes on
    return (challenge[:4], extra, rest, float(x[0])) if rank == 0 else float(x[0])


def _read_until_closed(s) -> bytes:
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def _read_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_a_peer_handshake_gives_no_proof_before_the_connector_proves_itself():
    env = {"PLEXUS_AUTH_TOKEN": TOKEN, "PLEXUS_TRANSPORTS": "tcp"}
    out = run_ranks(2, _hello_gets_only_a_nonce, env=env)
    magic, extra, rest, total = out[0]
    assert magic == struct.pack("<I", 0x504C5843)  # the challenge: a nonce, no proof
    assert extra == b"" and rest == b""  # no proof before ours, and none after a wrong one
    assert total == 4.0 and out[1] == 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreadable_token_file_is_a_value_error():
    path = os.path.join(tempfile.gettempdir(), "plexus-no-such-token-file")
    env = dict(os.environ, PLEXUS_AUTH_FILE=path)
    env.pop("PLEXUS_AUTH_TOKEN", None)
    out = subprocess.run([sys.executable, "-c", "import plexus._C as C; C.job_authenticated()"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "ValueError" in out.stderr and path in out.stderr, out.stderr


def test_plexus_info_says_whether_the_job_is_authenticated():
    def info(**extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLEXUS_AUTH")}
        env.update(extra)
        out = subprocess.run([sys.executable, "-m", "plexus.cli", "info", "--ranks", "2"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if line.startswith("authentication:"))

    assert "unauthenticated" in info()
    assert "PLEXUS_AUTH_TOKEN" in info(PLEXUS_AUTH_TOKEN=TOKEN) and "unauthenticated" not in info(PLEXUS_AUTH_TOKEN=TOKEN)


def test_plexus_token_prints_a_fresh_token():
    tokens = [subprocess.run([sys.executable, "-m", "plexus.cli", "token"], capture_output=True, text=True,
                             timeout=60).stdout.strip() for _ in range(2)]
    assert all(len(t) == 64 and int(t, 16) >= 0 for t in tokens) and tokens[0] != tokens[1]


def test_the_store_listens_where_master_addr_points():
    from plexus._rendezvous import _bind_ip

    assert _bind_ip("127.0.0.1") == "127.0.0.1"
    assert _bind_ip("localhost") == "127.0.0.1"
    assert _bind_ip("no-such-host.invalid") == "0.0.0.0"
    server = _C.TcpStoreServer(_bind_ip("127.0.0.1"), 0)
    other = _other_local_ip()
    if other is None:
        pytest.skip("this host has no address but loopback")
    with pytest.raises(OSError):  # bound to loopback: not reachable on the host's other address
        socket.create_connection((other, server.port), timeout=5).close()
    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def _other_local_ip():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip
