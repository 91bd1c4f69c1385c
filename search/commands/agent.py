"""`squeezefit agent --device NAME`: serve a local device to remote `squeezefit` runs over HTTP.

Clients name it `remote:http://HOST:PORT` and must send the same token. Without a token
(--token or $SQUEEZEFIT_AGENT_TOKEN) the agent refuses to start. The traffic is plain
HTTP: bind to a trusted network only (the default host is loopback).
"""

from __future__ import annotations

import argparse
import os

from evaluators.remote import DEFAULT_MAX_UPLOAD_MB, TOKEN_ENV, serve
from evaluators.vocabulary import UserError

HELP = "serve a device to remote searches: measure uploaded ONNX artifacts one at a time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="ort-cpu", help="the local device to serve, e.g. ort-cpu:4, openvino-cpu")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    parser.add_argument("--token", help=f"shared secret clients must send (default: ${TOKEN_ENV})")
    parser.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="refuse artifacts larger than this many MB"
    )


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UserError(f"the agent needs a token: pass --token or set {TOKEN_ENV}.")
    if args.max_upload_mb <= 0:
        raise UserError("--max-upload-mb must be positive.")
    serve(args.device, args.host, args.port, token, args.max_upload_mb)
    return 0
