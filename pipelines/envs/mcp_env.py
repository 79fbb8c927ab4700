"""MCP servers as tool environments, through the official `mcp` SDK (`mcp.Client`).

- Transport: `command` launches the server as a subprocess over stdio (its stderr goes to a temp file, whose
  tail explains a crash); `url` opens a streamable-HTTP session.
- Sync over async: TRL calls environment methods synchronously, the SDK is async. Each connection runs its
  client session inside one task on its own event loop, in a daemon thread; tool calls are submitted to that
  loop and waited for with the call timeout. Closing ends that task (the SDK's context managers exit in the
  task that entered them, as anyio requires), which terminates the server process, then stops the loop.
- Isolation: `reset: restart` (default) opens a new session for every rollout, so for stdio every rollout has
  its own server process and no state leaks between rollouts. `reset: {tool: NAME}` keeps one session per
  environment instance and calls that tool at each reset (the server's own reset hook).
- Failures: a server that exits, stops answering within `timeout_s`, or cannot start raises `EnvFailure`: the
  rollout's environment is marked failed (reward 0, counted as `env_crash`), and the next reset starts afresh.
- Every live connection is closed at interpreter exit (`atexit`) and when its environment is collected.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import sys
import tempfile
import threading
import weakref
from typing import Any

from pipelines.envs.external import (
    Backend,
    EnvFailure,
    ExternalEnv,
    ToolDef,
    build_env_class,
    observation_text,
)
from pipelines.envs.spec import PYTHON_PLACEHOLDER, McpEnvSpec, McpResetTool
from pipelines.errors import BadInput

log = logging.getLogger("midtrain.envs")
_LIVE: weakref.WeakSet[McpConnection] = weakref.WeakSet()
STDERR_TAIL_CHARS = 600


class McpConnection:
    """One MCP client session on a private event loop; every method is synchronous and thread-safe."""

    def __init__(self, spec: McpEnvSpec) -> None:
        self.spec = spec
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-session", daemon=True)
        self._client: Any = None
        self._stop: asyncio.Event | None = None
        self._main: concurrent.futures.Future[None] | None = None
        # Open for the connection's lifetime (the server writes to it), closed in `close`.
        self._errlog = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Start the server (stdio) or session (HTTP) and finish the handshake, within `startup_timeout_s`."""
        self._thread.start()
        _LIVE.add(self)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._main = asyncio.run_coroutine_threadsafe(self._session(ready), self._loop)
        try:
            ready.result(timeout=self.spec.startup_timeout_s)
        except concurrent.futures.TimeoutError:
            self.close()
            raise EnvFailure(f"{self.describe()}: no MCP handshake within {self.spec.startup_timeout_s:g}s"
                             f"{self._stderr_note()}") from None  # fmt: skip
        except Exception as exc:
            self.close()
            raise EnvFailure(
                f"{self.describe()}: could not start: {_reason(exc)}{self._stderr_note()}"
            ) from None

    async def _session(self, ready: concurrent.futures.Future[None]) -> None:
        from mcp import Client

        self._stop = asyncio.Event()
        try:
            async with Client(self._transport(), read_timeout_seconds=self.spec.timeout_s) as client:
                self._client = client
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # the session's own end: report it to whoever waits for the handshake
            if not ready.done():
                ready.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._client = None

    def _transport(self) -> Any:
        if self.spec.url is not None:
            return _http_transport(self.spec.url, self.spec.headers)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        assert self.spec.command is not None
        command = [sys.executable if part == PYTHON_PLACEHOLDER else part for part in self.spec.command]
        params = StdioServerParameters(command=command[0], args=command[1:], env=self.spec.env or None,
                                       cwd=self.spec.cwd)  # fmt: skip
        return stdio_client(params, errlog=self._errlog)

    def close(self) -> None:
        """End the session (terminating a stdio server), then the loop and its thread. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._main is not None:
            with contextlib.suppress(Exception):  # a session that already died has nothing left to close
                self._main.result(timeout=10)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not self._loop.is_running() and not self._thread.is_alive():
            self._loop.close()
        self._errlog.close()
        _LIVE.discard(self)

    @property
    def alive(self) -> bool:
        return (
            not self.closed and self._client is not None and self._main is not None and not self._main.done()
        )

    # -- requests ----------------------------------------------------------------------------------------------
    def _run(self, coroutine: Any, what: str) -> Any:
        if not self.alive:
            coroutine.close()
            raise EnvFailure(f"{self.describe()}: the session is closed{self._stderr_note()}")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            # The SDK enforces `read_timeout_seconds` itself; this outer wait only guards a wedged loop.
            return future.result(timeout=self.spec.timeout_s + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise EnvFailure(
                f"{self.describe()}: {what}: no answer within {self.spec.timeout_s:g}s"
            ) from None
        except Exception as exc:
            raise EnvFailure(f"{self.describe()}: {what}: {_reason(exc)}{self._stderr_note()}") from None

    def list_tools(self) -> list[ToolDef]:
        """Every tool the server lists (all pages), with its description and input schema."""

        async def listing() -> list[Any]:
            tools, cursor = [], None
            for _ in range(100):
                page = await self._client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

        found = self._run(listing(), "tools/list")
        return [ToolDef(t.name, t.description or "", dict(t.input_schema or {})) for t in found]

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        result = self._run(self._client.call_tool(name, arguments), f"tools/call {name}")
        return observation_text(result.content, result.structured_content), bool(result.is_error)

    # -- reporting ---------------------------------------------------------------------------------------------
    def describe(self) -> str:
        target = self.spec.url or " ".join(self.spec.command or [])
        return f"MCP server {self.spec.name or ''} ({target})".replace("  ", " ")

    def _stderr_note(self) -> str:
        """The last lines the server wrote to stderr (why it died, usually)."""
        try:
            self._errlog.flush()
            self._errlog.seek(0)
            text = self._errlog.read()
        except (OSError, ValueError):
            return ""
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-4:] if line.strip())
        return f"; server stderr: {tail[-STDERR_TAIL_CHARS:]}" if tail else ""


def _http_transport(url: str, headers: dict[str, str]) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    if not headers:
        return streamable_http_client(url)
    import httpx

    # mcp 2.x types the client as httpx2.AsyncClient; httpx's has the same API and works (headers path run).
    client = httpx.AsyncClient(headers=headers, follow_redirects=True)
    return streamable_http_client(url, http_client=client)  # type: ignore[arg-type]


def _reason(exc: BaseException) -> str:
    """One line for an exception, unwrapping anyio's exception groups to their first leaf."""
    while getattr(exc, "exceptions", None):  # BaseExceptionGroup (Python ≥ 3.11, or anyio's backport)
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    text = str(exc).strip() or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


@atexit.register
def close_all() -> None:
    """Close every live connection (server processes must not outlive midtrain)."""
    for connection in list(_LIVE):
        connection.close()


class McpBackend(Backend):
    """Sessions for one environment instance: a new one per reset (`restart`) or one kept (`reset` tool)."""

    def __init__(self, spec: McpEnvSpec) -> None:
        self.spec = spec
        self.connection: McpConnection | None = None

    def _connect(self) -> McpConnection:
        connection = McpConnection(self.spec)
        connection.open()
        self.connection = connection
        return connection

    def reset(self, setup: dict[str, Any]) -> None:
        hook = self.spec.reset
        if isinstance(hook, McpResetTool) and self.connection is not None and self.connection.alive:
            text, is_error = self.connection.call(hook.tool, hook.arguments)
            if is_error:
                raise EnvFailure(f"reset tool {hook.tool!r} failed: {text}")
        else:
            self.close()
            self._connect()
        for index, call in enumerate(setup.get("calls", [])):
            text, is_error = self.call(str(call.get("name", "")), dict(call.get("arguments") or {}))
            if is_error:
                raise EnvFailure(f"task setup call {index} ({call.get('name')}) failed: {text}")

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        if self.connection is None:
            self._connect()
        assert self.connection is not None
        return self.connection.call(name, arguments)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class McpEnv(ExternalEnv):
    """Base of the generated MCP environment classes (`mcp_env_class`)."""

    _spec: McpEnvSpec
    _label = "MCP"

    def _new_backend(self) -> Backend:
        backend = McpBackend(self._spec)
        weakref.finalize(self, backend.close)  # TRL pools instances; a collected one must not leave a server
        return backend


def list_server_tools(spec: McpEnvSpec) -> list[ToolDef]:
    """Start the server, list its tools, stop it."""
    connection = McpConnection(spec)
    connection.open()
    try:
        return connection.list_tools()
    finally:
        connection.close()


def mcp_env_class(spec: McpEnvSpec) -> type[McpEnv]:
    """A `ToolEnv` class for an MCP server: its tools (or the `tools` subset) as generated methods."""
    listed = list_server_tools(spec)
    names = [t.name for t in listed]
    if spec.tools is not None:
        unknown = [t for t in spec.tools if t not in names]
        if unknown:
            raise BadInput(
                f"env {spec.name!r}: tools {unknown} are not offered by the server (it lists {names})"
            )
        listed = [t for t in listed if t.name in spec.tools]
    if not listed:
        raise BadInput(f"env {spec.name!r}: the MCP server lists no tools")
    class_name = "".join(part.capitalize() for part in str(spec.name).replace("-", "_").split("_")) + "McpEnv"
    return build_env_class(class_name, McpEnv, listed, {"_spec": spec, "domain": spec.name})  # type: ignore[return-value]
