"""A device reached over HTTP: the `squeezefit agent` server and the `remote:URL` client.

The agent runs on the machine that owns the target device and measures artifacts sent
to it, one at a time. Side-by-side timing (`evaluators.paired`) runs on the agent's
machine too: the artifacts to alternate are uploaded once as *references* and named by key.
Protocol (JSON responses, every request needs the header `Authorization: Bearer <token>`):

- GET /info -> {"device", "precisions", "int8_recipe", "accuracy_runtime", "fingerprint",
  "fingerprint_hash", "max_upload_mb", "max_references"}.
- POST /measure, body = the ONNX file's bytes, optional header `X-Squeezefit-Timing` =
  `TimingSettings` as JSON -> a `LatencyMeasurement` dict with the agent's fingerprint.
  With the header `X-Squeezefit-Reference: <key>` the upload is timed against that
  reference instead (`Device.measure_paired`) -> a `PairedMeasurement` dict. Both are
  cached by the agent's own latency cache.
- POST /reference, body = the ONNX file's bytes -> {"reference": <key>}, the key being
  the first 16 hex digits of the bytes' SHA-256 (`reference_key`). The agent keeps the
  `max_references` (default 8) most recently used references in a private temporary
  folder, removed when the server closes; uploading the same bytes again only refreshes them.
- POST /together, body = JSON {"references": [<key>, ...], "timing": <TimingSettings dict,
  optional>} -> {"measurements": [<PairedMeasurement dict>, ...]}: every reference timed in
  one round-robin session, each against the first (`Device.measure_together`, never cached).

Errors: 401 missing or wrong token; 411 no Content-Length; 413 body over the upload
limit (judged from Content-Length before any byte of the body is read); 400 bytes that
are not a valid ONNX model (checked with `onnx.load_from_string` + `onnx.checker` before
any runtime sees them, for a candidate and a reference alike), a graph without fixed input
shapes, artifacts whose inputs differ, an artifact the runtime cannot load (said when it is
loaded to be timed), bad settings or a bad JSON body; 400 with `"code": "unknown_reference"`
a key the agent does not hold (never uploaded, evicted, or the agent restarted); 500 a bug
in the agent. Every error body is {"error": <one sentence>} (plus "code" where given). The
agent keeps serving after every error. Traffic is plain HTTP: expose the agent only on a
trusted network.

The client `RemoteDevice` ("remote:http://host:port") takes its token from the `token`
option or `SQUEEZEFIT_AGENT_TOKEN`; its fingerprint, precisions and INT8 recipe are the
agent's, read once from /info. `measure_paired` and `measure_together` upload each artifact
to /reference (once per client: it remembers the keys) and time them with /together; on an
unknown key it uploads them all again once and retries. More artifacts than the agent keeps
are timed in several sessions, each with the first artifact, so every ratio still comes from
one session with its reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import threading
import traceback
import urllib.error
import urllib.request
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from evaluators.base import Device, LatencyMeasurement, PairedMeasurement, TimingSettings
from evaluators.inputs import synthetic_inputs
from evaluators.registry import get_device, register_device
from evaluators.reported import ReportedDevice, device_info
from evaluators.vocabulary import UserError

TOKEN_ENV = "SQUEEZEFIT_AGENT_TOKEN"
TIMING_HEADER = "X-Squeezefit-Timing"
REFERENCE_HEADER = "X-Squeezefit-Reference"
UNKNOWN_REFERENCE = "unknown_reference"
DEFAULT_MAX_UPLOAD_MB = 512.0
DEFAULT_MAX_REFERENCES = 8


def reference_key(data: bytes) -> str:
    """The key of an uploaded reference: the first 16 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Server.


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class _ReferenceStore:
    """The agent's uploaded references: files in a private temporary folder, LRU of `capacity`.

    Not thread-safe: the agent uses it only under its one-at-a-time lock, so a reference
    is never evicted while it is being timed.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.folder = Path(tempfile.mkdtemp(prefix="squeezefit-agent-references-"))
        self._paths: OrderedDict[str, Path] = OrderedDict()

    def add(self, data: bytes) -> str:
        """Keep `data` (checked ONNX bytes) as the most recently used reference; returns its key."""
        key = reference_key(data)
        if key not in self._paths:
            path = self.folder / f"{key}.onnx"
            path.write_bytes(data)
            self._paths[key] = path
        self._paths.move_to_end(key)
        while len(self._paths) > self.capacity:
            _, evicted = self._paths.popitem(last=False)
            evicted.unlink(missing_ok=True)
        return key

    def resolve(self, keys: list[str]) -> list[Path]:
        """The files of `keys`, now the most recently used; an unknown key is a 400 `unknown_reference`."""
        for key in keys:
            if key not in self._paths:
                raise _HttpError(
                    400, f"unknown reference {key}: upload it to POST /reference first", code=UNKNOWN_REFERENCE
                )
            self._paths.move_to_end(key)
        return [self._paths[key] for key in keys]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _AgentServer(ThreadingHTTPServer):
    """The HTTP server; closing it also removes the uploaded references."""

    daemon_threads = True
    references: _ReferenceStore

    def server_close(self):
        super().server_close()
        self.references.close()


def make_server(
    device: Device,
    host: str,
    port: int,
    token: str,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    max_references: int = DEFAULT_MAX_REFERENCES,
    quiet: bool = False,
) -> ThreadingHTTPServer:
    """An agent server for `device`, bound but not yet serving (call `serve_forever`).

    port 0 picks a free port (`server.server_address[1]`). max_references: uploaded
    references kept (at least 2). An empty token raises `UserError`.
    """
    if not token:
        raise UserError(f"the agent needs a token: pass --token or set {TOKEN_ENV}.")
    if max_references < 2:
        raise UserError("the agent must keep at least 2 references to time artifacts side by side.")
    max_bytes = int(max_upload_mb * 1024 * 1024)
    one_at_a_time = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "squeezefit-agent"

        def do_GET(self):
            self._answer(self._info if self.path.rstrip("/") == "/info" else None)

        def do_POST(self):
            routes = {"/measure": self._measure, "/reference": self._reference, "/together": self._together}
            self._answer(routes.get(self.path.rstrip("/")))

        def _answer(self, action):
            try:
                if action is None:
                    raise _HttpError(
                        404, f"no such endpoint {self.path}; use GET /info or POST /measure, /reference, /together"
                    )
                self._authorize()
                status, body = 200, action()
            except _HttpError as exc:
                status, body = exc.status, {"error": str(exc), **({"code": exc.code} if exc.code else {})}
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

        def _body(self) -> bytes:
            length = self._length()
            if length is None:
                raise _HttpError(411, "the upload needs a Content-Length header")
            if length > max_bytes:
                raise _HttpError(413, f"upload of {length / 2**20:.1f} MB is over the agent's {max_upload_mb} MB limit")
            return self.rfile.read(length)

        def _info(self) -> dict:
            return {**device_info(device), "max_upload_mb": max_upload_mb, "max_references": max_references}

        def _measure(self) -> dict:
            data = self._body()
            _check_onnx_bytes(data)
            settings = _settings_from_header(self.headers.get(TIMING_HEADER))
            key = (self.headers.get(REFERENCE_HEADER) or "").strip()
            with one_at_a_time, tempfile.TemporaryDirectory(prefix="squeezefit-agent-") as tmp:
                path = Path(tmp) / "artifact.onnx"
                path.write_bytes(data)
                if key:
                    reference = self.server.references.resolve([key])[0]
                    return device.measure_paired(path, reference, settings=settings).to_dict()
                return device.measure(path, settings=settings).to_dict()

        def _reference(self) -> dict:
            data = self._body()
            synthetic_inputs(_check_onnx_bytes(data))  # no fixed input shape: refused now, not when used
            with one_at_a_time:
                return {"reference": self.server.references.add(data)}

        def _together(self) -> dict:
            keys, settings = _together_request(self._body())
            with one_at_a_time:
                measurements = device.measure_together(self.server.references.resolve(keys), settings=settings)
            return {"measurements": [m.to_dict() for m in measurements]}

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write(f"agent {self.address_string()}: {fmt % args}\n")

    server = _AgentServer((host, port), Handler)
    server.references = _ReferenceStore(max_references)  # after binding: a failed bind leaves no folder behind
    return server


def _check_onnx_bytes(data: bytes):
    """The `onnx.ModelProto` of uploaded bytes; anything that is not a valid ONNX model is a 400."""
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker errors have no common base class
        raise _HttpError(400, f"the upload is not a valid ONNX model ({str(exc).splitlines()[0][:200]})") from None
    if not model.graph.node:
        raise _HttpError(400, "the upload is not a valid ONNX model (its graph has no nodes)")
    return model


def _settings_from_header(value: str | None) -> TimingSettings:
    if not value:
        return TimingSettings()
    try:
        return TimingSettings.from_dict(json.loads(value))
    except (ValueError, TypeError) as exc:
        raise _HttpError(400, f"bad {TIMING_HEADER} header ({exc})") from None


def _together_request(body: bytes) -> tuple[list[str], TimingSettings]:
    """The reference keys and timing settings of a POST /together body; anything malformed is a 400."""
    try:
        request = json.loads(body)
        keys, timing = request["references"], request.get("timing")
        if not keys or not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("'references' must be a non-empty list of keys")
        return keys, TimingSettings.from_dict(timing) if timing else TimingSettings()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _HttpError(400, f"bad /together body ({type(exc).__name__}: {exc})") from None


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


class _UnknownReference(UserError):
    """The agent does not hold a reference key the client sent (evicted, or the agent restarted)."""


class RemoteDevice(ReportedDevice):
    """A device measured by a `squeezefit agent` at `url` (e.g. "http://10.0.0.7:8765").

    Side-by-side timing runs on the agent (see the module docstring); the client remembers
    which artifacts it uploaded as references, by their bytes' key, for its lifetime.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 1800.0, cache=None):
        super().__init__(f"remote:{url}", cache=cache)
        self.url = url.rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV)
        if not self.token:
            raise UserError(f"device {self.name} needs the agent's token: set {TOKEN_ENV}.")
        self.timeout_s = timeout_s
        self._info = None
        self._uploaded: dict[str, str] = {}  # reference_key(bytes) -> the agent's key for them

    def info(self) -> dict:
        """The agent's /info answer, fetched once."""
        if self._info is None:
            self._info = json.loads(self._request("GET", "/info", timeout=30))
        return self._info

    def _measure(self, artifact_path: Path, settings, inputs: dict):
        body = self._request(
            "POST",
            "/measure",
            data=self._upload_bytes(artifact_path),
            timeout=self.timeout_s,
            headers={TIMING_HEADER: json.dumps(settings.to_dict()), "Content-Type": "application/octet-stream"},
        )
        return dataclasses.replace(LatencyMeasurement.from_dict(json.loads(body)), device=self.name)

    def _measure_together(
        self, paths: list[Path], settings: TimingSettings, inputs: dict, reference_structure: str
    ) -> list[PairedMeasurement]:
        # The agent keeps `max_references` files: more are timed in several sessions, each
        # with paths[0] again, so every ratio still comes from one session with its reference.
        size = max(2, int(self.info().get("max_references", DEFAULT_MAX_REFERENCES)))
        results = self._together(paths[:size], settings)
        for start in range(size, len(paths), size - 1):
            results += self._together([paths[0], *paths[start : start + size - 1]], settings)[1:]
        return results

    def _together(self, paths: list[Path], settings: TimingSettings) -> list[PairedMeasurement]:
        """One POST /together session of `paths` (at most `max_references`), uploading what the agent lacks."""
        try:
            answer = self._post_together([self._reference(path) for path in paths], settings)
        except _UnknownReference:  # evicted by another client, or the agent restarted: upload once more
            answer = self._post_together([self._reference(path, again=True) for path in paths], settings)
        return [dataclasses.replace(PairedMeasurement.from_dict(m), device=self.name) for m in answer["measurements"]]

    def _post_together(self, keys: list[str], settings: TimingSettings) -> dict:
        body = json.dumps({"references": keys, "timing": settings.to_dict()}).encode()
        headers = {"Content-Type": "application/json"}
        return json.loads(self._request("POST", "/together", data=body, timeout=self.timeout_s, headers=headers))

    def _reference(self, path: Path, *, again: bool = False) -> str:
        """The agent's key for the file at `path`, uploaded to /reference unless this client already did (or `again`)."""
        data = self._upload_bytes(path)
        key = reference_key(data)
        if again or key not in self._uploaded:
            answer = self._request(
                "POST",
                "/reference",
                data=data,
                timeout=self.timeout_s,
                headers={"Content-Type": "application/octet-stream"},
            )
            self._uploaded[key] = json.loads(answer)["reference"]
        return self._uploaded[key]

    def _upload_bytes(self, path: Path) -> bytes:
        """The file's bytes; a file over the agent's upload limit is a `UserError`."""
        limit_mb = self.info()["max_upload_mb"]
        if path.stat().st_size > limit_mb * 2**20:
            raise UserError(f"{path} is larger than the agent's {limit_mb} MB upload limit.")
        return path.read_bytes()

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
                answer = json.loads(exc.read())
            except ValueError:
                answer = {}
            message = answer.get("error", exc.reason)
            if exc.code >= 500:
                raise RuntimeError(f"the agent at {self.url} failed: {message}") from None
            error = _UnknownReference if answer.get("code") == UNKNOWN_REFERENCE else UserError
            raise error(f"the agent at {self.url} answered {exc.code}: {message}.") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach the agent at {self.url} ({reason}).") from None


def _remote_factory(arg, **options):
    if not arg or not arg.startswith(("http://", "https://")):
        raise UserError("a remote device is named remote:http://HOST:PORT.")
    return RemoteDevice(arg, **options)


register_device("remote", _remote_factory, usage="remote:http://HOST:PORT")
