"""A device reached over HTTP: the `squeezefit agent` server and the `remote:URL` client.

The agent runs on the machine that owns the target device and measures artifacts sent
to it, one at a time. Protocol (JSON responses, every request needs the header
`Authorization: Bearer <token>`):

- GET /info -> {"device", "precisions", "int8_recipe", "accuracy_runtime", "fingerprint",
  "fingerprint_hash", "max_upload_mb"}.
- POST /measure, body = the ONNX file's bytes, optional header `X-Squeezefit-Timing` =
  `TimingSettings` as JSON -> a `LatencyMeasurement` dict with the agent's fingerprint.

Errors: 401 missing or wrong token; 411 no Content-Length; 413 body over the upload
limit (judged from Content-Length before any byte of the body is read); 400 bytes that
are not a valid ONNX model (checked with `onnx.load_from_string` + `onnx.checker` before
any runtime sees them) or bad settings; 500 a bug in the agent. The agent keeps serving
after every error. Traffic is plain HTTP: expose the agent only on a trusted network.

The client `RemoteDevice` ("remote:http://host:port") takes its token from the `token`
option or `SQUEEZEFIT_AGENT_TOKEN`; its fingerprint, precisions and INT8 recipe are the
agent's, read once from /info.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import sys
import tempfile
import threading
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from evaluators.base import Device, Fingerprint, LatencyMeasurement, TimingSettings
from evaluators.registry import get_device, register_device
from evaluators.vocabulary import Int8Recipe, UserError

TOKEN_ENV = "SQUEEZEFIT_AGENT_TOKEN"
TIMING_HEADER = "X-Squeezefit-Timing"
DEFAULT_MAX_UPLOAD_MB = 512.0


# --------------------------------------------------------------------------------------
# Server.


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def make_server(
    device: Device,
    host: str,
    port: int,
    token: str,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    quiet: bool = False,
) -> ThreadingHTTPServer:
    """An agent server for `device`, bound but not yet serving (call `serve_forever`).

    port 0 picks a free port (`server.server_address[1]`). An empty token raises `UserError`.
    """
    if not token:
        raise UserError(f"the agent needs a token: pass --token or set {TOKEN_ENV}.")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    one_at_a_time = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "squeezefit-agent"

        def do_GET(self):
            self._answer(self._info if self.path.rstrip("/") == "/info" else None)

        def do_POST(self):
            self._answer(self._measure if self.path.rstrip("/") == "/measure" else None)

        def _answer(self, action):
            try:
                if action is None:
                    raise _HttpError(404, f"no such endpoint {self.path}; use GET /info or POST /measure")
                self._authorize()
                status, body = 200, action()
            except _HttpError as exc:
                status, body = exc.status, {"error": str(exc)}
            except UserError as exc:
                status, body = 400, {"error": str(exc)}
            except Exception as exc:  # a bug: report it, keep serving
                traceback.print_exc()
                status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _length(self) -> int | None:
            try:
                return int(self.headers["Content-Length"])
            except (TypeError, ValueError):
                return None

        def _authorize(self):
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                # Drain a body of acceptable size so the client reads the 401, not a reset.
                if (length := self._length()) and length <= max_bytes:
                    self.rfile.read(length)
                raise _HttpError(401, "missing or wrong token")

        def _info(self) -> dict:
            return {**device_info(device), "max_upload_mb": max_upload_mb}

        def _measure(self) -> dict:
            length = self._length()
            if length is None:
                raise _HttpError(411, "the upload needs a Content-Length header")
            if length > max_bytes:
                raise _HttpError(413, f"upload of {length / 2**20:.1f} MB is over the agent's {max_upload_mb} MB limit")
            data = self.rfile.read(length)
            _check_onnx_bytes(data)
            settings = _settings_from_header(self.headers.get(TIMING_HEADER))
            with one_at_a_time, tempfile.TemporaryDirectory(prefix="squeezefit-agent-") as tmp:
                path = Path(tmp) / "artifact.onnx"
                path.write_bytes(data)
                return device.measure(path, settings=settings).to_dict()

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write(f"agent {self.address_string()}: {fmt % args}\n")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def device_info(device: Device) -> dict:
    """What /info tells a client about `device`."""
    fingerprint = device.fingerprint()
    recipe = device.int8_recipe
    return {
        "device": device.name,
        "precisions": list(device.precisions),
        "int8_recipe": recipe.to_dict() if recipe else None,
        "accuracy_runtime": device.accuracy_runtime,
        "fingerprint": fingerprint.to_dict(),
        "fingerprint_hash": fingerprint.hash,
    }


def _check_onnx_bytes(data: bytes) -> None:
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker errors have no common base class
        raise _HttpError(400, f"the upload is not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from None
    if not model.graph.node:
        raise _HttpError(400, "the upload is not a valid ONNX model (its graph has no nodes)")


def _settings_from_header(value: str | None) -> TimingSettings:
    if not value:
        return TimingSettings()
    try:
        return TimingSettings.from_dict(json.loads(value))
    except (ValueError, TypeError) as exc:
        raise _HttpError(400, f"bad {TIMING_HEADER} header ({exc})") from None


def serve(
    device_name: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    **device_options,
) -> None:
    """Serve `device_name` (e.g. "ort-cpu:4") until interrupted. token defaults to $SQUEEZEFIT_AGENT_TOKEN."""
    token = token or os.environ.get(TOKEN_ENV)
    device = get_device(device_name, **device_options)
    server = make_server(device, host, port, token, max_upload_mb)
    device.fingerprint()  # fail before announcing the URL if the runtime is broken
    print(f"squeezefit agent: {device.name} on http://{host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


# --------------------------------------------------------------------------------------
# Client.


class RemoteDevice(Device):
    """A device measured by a `squeezefit agent` at `url` (e.g. "http://10.0.0.7:8765")."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 1800.0, cache=None):
        super().__init__(f"remote:{url}", cache=cache)
        self.url = url.rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV)
        if not self.token:
            raise UserError(f"device {self.name} needs the agent's token: set {TOKEN_ENV}.")
        self.timeout_s = timeout_s
        self._info = None

    def info(self) -> dict:
        """The agent's /info answer, fetched once."""
        if self._info is None:
            self._info = json.loads(self._request("GET", "/info", timeout=30))
        return self._info

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.info()["precisions"])

    @property
    def int8_recipe(self) -> Int8Recipe | None:
        recipe = self.info()["int8_recipe"]
        return Int8Recipe.from_dict(recipe) if recipe else None

    @property
    def accuracy_runtime(self) -> str:
        return self.info().get("accuracy_runtime", "onnxruntime")

    def fingerprint(self) -> Fingerprint:
        return Fingerprint.from_dict(self.info()["fingerprint"])

    def _measure(self, artifact_path: Path, settings, inputs: dict):
        limit_mb = self.info()["max_upload_mb"]
        if artifact_path.stat().st_size > limit_mb * 2**20:
            raise UserError(f"{artifact_path} is larger than the agent's {limit_mb} MB upload limit.")
        body = self._request(
            "POST",
            "/measure",
            data=artifact_path.read_bytes(),
            timeout=self.timeout_s,
            headers={TIMING_HEADER: json.dumps(settings.to_dict()), "Content-Type": "application/octet-stream"},
        )
        return dataclasses.replace(LatencyMeasurement.from_dict(json.loads(body)), device=self.name)

    def _request(
        self, method: str, path: str, *, timeout: float, data: bytes | None = None, headers: dict | None = None
    ) -> bytes:
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            if exc.code >= 500:
                raise RuntimeError(f"the agent at {self.url} failed: {message}") from None
            raise UserError(f"the agent at {self.url} answered {exc.code}: {message}.") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach the agent at {self.url} ({reason}).") from None


def _remote_factory(arg, **options):
    if not arg or not arg.startswith(("http://", "https://")):
        raise UserError("a remote device is named remote:http://HOST:PORT.")
    return RemoteDevice(arg, **options)


register_device("remote", _remote_factory, usage="remote:http://HOST:PORT")
