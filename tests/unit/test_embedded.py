"""The embedded redis-server: real redis-server processes, never mocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import hfqueue.state.embedded
from hfqueue.errors import BrokerUnavailableError
from hfqueue.state.embedded import RedisServer, ensure_running, find_redis_server, free_port, stop_embedded

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(hfqueue.state.embedded.__file__).resolve().parents[2]


def _ping(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        # a daemon waiting to be reaped by init is a zombie: gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _state(state_dir: Path) -> dict:
    return json.loads((state_dir / "redis" / "server.json").read_text())


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir whose embedded server is always stopped afterwards, even when a test fails."""
    state = tmp_path / "state"
    yield state
    started: set[int] = set()
    for name in ("server.json", "redis.pid"):
        try:
            text = (state / "redis" / name).read_text()
            started.add(int(json.loads(text)["pid"]) if name.endswith(".json") else int(text))
        except (OSError, ValueError, KeyError):
            pass
    stop_embedded(state)
    for pid in started:  # a test that lost track of a server must not leave it running
        if _pid_alive(pid) and b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "data")
    yield srv
    srv.kill()


def test_find_redis_server_returns_an_executable() -> None:
    # given / when
    path = find_redis_server()
    # then
    assert Path(path).is_file()
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=10).stdout
    assert "Redis server" in out


def test_free_port_is_bindable() -> None:
    # given
    port = free_port()
    # when / then: nothing holds it
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_server_starts_answers_and_stops(server: RedisServer) -> None:
    # given / when
    with server as srv:
        # then
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
        assert _ping(srv.url)
        assert srv.running
    # and after the block it is gone, and stopping again is harmless
    assert not server.running
    assert not _ping(server.url)
    server.stop()
    server.kill()


def test_redis_server_with_password(tmp_path: Path) -> None:
    # given: a password with characters that need quoting in a URL
    with RedisServer(tmp_path, password="s3cr:t/@x", appendonly=False) as srv:
        # then: the URL authenticates, a client without it is refused
        assert srv.url.startswith("redis://:")
        assert _ping(srv.url)
        with redis.Redis(port=srv.port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        srv.flushall()  # the helper authenticates too


def test_kill_then_restart_keeps_data_with_aof(server: RedisServer) -> None:
    # given: a key acknowledged and written out to the AOF
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.set("k", "v")
        while client.info("persistence")["aof_buffer_length"]:
            time.sleep(0.01)
    # when: SIGKILL, then restart on the same port and dir
    server.kill()
    assert not _ping(server.url)
    server.restart()
    # then
    with redis.Redis.from_url(server.url) as client:
        assert client.get("k") == b"v"


def test_flushall_empties_the_server(server: RedisServer) -> None:
    # given
    server.start()
    with redis.Redis.from_url(server.url) as client:
        client.set("k", "v")
        # when
        server.flushall()
        # then
        assert client.dbsize() == 0


def test_start_on_a_taken_port_raises(server: RedisServer, tmp_path: Path) -> None:
    # given: a server holding the port
    server.start()
    # when / then: a second server on that port fails fast, with redis-server's reason
    with pytest.raises(BrokerUnavailableError) as info:
        RedisServer(tmp_path / "other", port=server.port).start(timeout=5)
    assert str(server.port) in str(info.value)


def test_ensure_running_starts_once_and_reuses(state_dir: Path) -> None:
    # given: nothing running
    # when
    url = ensure_running(state_dir)
    first = _state(state_dir)
    again = ensure_running(state_dir)
    # then: the same daemon serves both calls
    assert url == again == first["url"]
    assert _state(state_dir)["pid"] == first["pid"]
    assert _ping(url)
    assert (state_dir / "redis" / "appendonly.aof").exists()


def _ensure_in_subprocess(state_dir: Path) -> subprocess.Popen[str]:
    code = "import sys; from pathlib import Path; from hfqueue.state.embedded import ensure_running; "
    code += "print(ensure_running(Path(sys.argv[1])))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(state_dir)], stdout=subprocess.PIPE, text=True, env=env
    )


def test_ensure_running_from_another_process_returns_same_url(state_dir: Path) -> None:
    # given: a server started here
    url = ensure_running(state_dir)
    pid = _state(state_dir)["pid"]
    # when: another process asks
    with _ensure_in_subprocess(state_dir) as proc:
        out, _ = proc.communicate(timeout=30)
    # then: it gets the same server, and the server outlived nothing it should not have
    assert proc.returncode == 0
    assert out.strip() == url
    assert _state(state_dir)["pid"] == pid


def test_concurrent_processes_start_one_server(state_dir: Path) -> None:
    # given: several processes racing to start the server
    procs = [_ensure_in_subprocess(state_dir) for _ in range(4)]
    # when
    urls = set()
    for proc in procs:
        with proc:
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        urls.add(out.strip())
    # then: one server, and it outlives the processes that started it
    assert urls == {_state(state_dir)["url"]}
    assert _ping(urls.pop())


def test_stop_embedded_then_ensure_running_starts_a_fresh_one(state_dir: Path) -> None:
    # given: a running server holding a key
    url = ensure_running(state_dir)
    pid = _state(state_dir)["pid"]
    with redis.Redis.from_url(url) as client:
        client.set("k", "v")
    # when
    assert stop_embedded(state_dir) is True
    # then: it is gone, the state file too, and a second stop says so
    assert not _pid_alive(pid)
    assert not _ping(url)
    assert not (state_dir / "redis" / "server.json").exists()
    assert stop_embedded(state_dir) is False
    # and a fresh server comes up, with the data from the append-only file
    url2 = ensure_running(state_dir)
    assert _state(state_dir)["pid"] != pid
    with redis.Redis.from_url(url2) as client:
        assert client.get("k") == b"v"


def test_stop_embedded_without_a_server(tmp_path: Path) -> None:
    # given / when / then
    assert stop_embedded(tmp_path / "nothing-here") is False


def test_stale_server_json_is_replaced(state_dir: Path) -> None:
    # given: server.json naming a dead process and a port nobody serves
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    port = free_port()
    (state_dir / "redis").mkdir(parents=True)
    stale = {"pid": dead.pid, "port": port, "url": f"redis://127.0.0.1:{port}/0"}
    (state_dir / "redis" / "server.json").write_text(json.dumps(stale))
    # when
    url = ensure_running(state_dir)
    # then: a new live server replaced it
    state = _state(state_dir)
    assert state["pid"] != dead.pid
    assert _pid_alive(state["pid"])
    assert url == state["url"]
    assert _ping(url)


def test_killed_embedded_server_is_restarted(state_dir: Path) -> None:
    # given: the daemon died hard, leaving server.json and its pidfile behind
    ensure_running(state_dir)
    pid = _state(state_dir)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # when
    url = ensure_running(state_dir)
    # then
    assert _state(state_dir)["pid"] != pid
    assert _ping(url)


def test_lost_server_json_orphan_is_replaced_keeping_data(state_dir: Path) -> None:
    # given: a running server holding a key, whose server.json was lost
    url = ensure_running(state_dir)
    pid = _state(state_dir)["pid"]
    with redis.Redis.from_url(url) as client:
        client.set("k", "v")
    (state_dir / "redis" / "server.json").unlink()
    # when
    url2 = ensure_running(state_dir)
    # then: the orphan was stopped (never two servers on one AOF) and its data carried over
    assert not _pid_alive(pid)
    assert _state(state_dir)["pid"] != pid
    with redis.Redis.from_url(url2) as client:
        assert client.get("k") == b"v"


def test_stop_embedded_stops_an_orphan(state_dir: Path) -> None:
    # given: a running server whose server.json was lost
    ensure_running(state_dir)
    pid = _state(state_dir)["pid"]
    (state_dir / "redis" / "server.json").unlink()
    # when / then
    assert stop_embedded(state_dir) is True
    assert not _pid_alive(pid)


def _kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_address_is_kept_across_stops_kills_and_restarts(state_dir: Path) -> None:
    # given a running embedded server
    url = ensure_running(state_dir)

    # when it is stopped and started again, then killed and started again
    stop_embedded(state_dir)
    after_stop = ensure_running(state_dir)
    _kill_and_wait(_state(state_dir)["pid"])
    after_kill = ensure_running(state_dir)

    # then it always comes back at the same address, and says it was restored from its append-only file
    assert url == after_stop == after_kill
    assert hfqueue.state.embedded.running(state_dir)["restored"] is True  # type: ignore[index]


def test_a_port_taken_meanwhile_moves_the_server_and_says_what_to_do(state_dir: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # given a server stopped, and another program listening on its port
    url = ensure_running(state_dir)
    port = _state(state_dir)["port"]
    stop_embedded(state_dir)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()

        # when it is started again
        new = ensure_running(state_dir)

    # then it listens elsewhere, keeps that port from now on, and the log says why and what to do
    assert new != url and _ping(new)
    assert f"port {port} of the embedded redis-server is taken by another program" in caplog.text
    stop_embedded(state_dir)
    assert ensure_running(state_dir) == new


def test_revive_brings_a_crashed_server_back_but_not_one_stopped_by_hfq_down(state_dir: Path) -> None:
    # given a running server
    url = ensure_running(state_dir)

    # when it is killed, then revive starts it again at its address
    _kill_and_wait(_state(state_dir)["pid"])
    assert hfqueue.state.embedded.revive(state_dir) == url and _ping(url)

    # when `hfq down` stops it, then revive leaves it stopped, until a command starts it (clearing the mark)
    stop_embedded(state_dir)
    assert hfqueue.state.embedded.stopped_by_operator(state_dir)
    assert hfqueue.state.embedded.revive(state_dir) is None and not _ping(url)
    assert ensure_running(state_dir) == url
    assert not hfqueue.state.embedded.stopped_by_operator(state_dir)


def test_revival_thread_restarts_once_and_waits_quietly_after_hfq_down(state_dir: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # given a process watching its embedded server
    from hfqueue.cli.revival import Revival
    from hfqueue.core.config import Settings

    settings = Settings(state_dir=state_dir)
    url = ensure_running(state_dir)
    watch = Revival(settings, url)
    watch.step()

    # when the server is killed, then one look brings it back and says so once
    _kill_and_wait(_state(state_dir)["pid"])
    watch.step()
    assert _ping(url)
    assert caplog.text.count("is gone (crashed or killed)") == 1 and "is back at" in caplog.text

    # when it is stopped with `hfq down`, then looks leave it stopped, saying so once
    stop_embedded(state_dir)
    for _ in range(3):
        watch.step()
    assert not _ping(url) and caplog.text.count("was stopped (hfq down)") == 1
