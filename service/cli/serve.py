"""`cgd serve`: run the HTTP service with uvicorn (settings from flags, then CGD_* variables)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the image-retrieval HTTP service")
    serve.add_argument("--host", help="interface to bind (CGD_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (CGD_PORT, default 8000)")
    serve.add_argument("--data-dir", type=Path, help="gallery, models and jobs (CGD_DATA_DIR)")
    serve.add_argument("--checkpoint", type=Path, help="serve this trained checkpoint (CGD_CHECKPOINT)")
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"), help="CGD_DEVICE, default auto")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {name: getattr(args, name) for name in ("host", "port", "data_dir", "checkpoint", "device")
                 if getattr(args, name) is not None}
    settings = Settings(**overrides)
    _exit_zero_after_graceful_shutdown()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=30)
    return 0


def _exit_zero_after_graceful_shutdown() -> None:
    """uvicorn re-raises SIGINT/SIGTERM once its graceful shutdown is done, to die by the signal;
    a shutdown that completed is a clean stop, so the re-raised signal is dropped and we exit 0.
    (A Python handler, not SIG_IGN, so that processes started later do not inherit an ignored signal.)"""
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _drop_signal)


def _drop_signal(signum: int, frame: object) -> None:
    """Handler that does nothing (see `_exit_zero_after_graceful_shutdown`)."""
