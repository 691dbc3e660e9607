"""``duo serve checkpoint=<run> [host=127.0.0.1 port=8000 max_steps= max_samples= queue= ...]``

Loads the checkpoint once and serves the page and the JSON API (see :mod:`duo.serve`)
with uvicorn until interrupted. The keys are the fields of :class:`duo.serve.ServeConfig`.
"""

from __future__ import annotations

import sys

MISSING_EXTRA = "duo serve needs the serve extra: pip install 'duo-lm[serve]'"


def help_text() -> str:
    from ..serve.config import ServeConfig
    from .common import command_help

    return command_help("serve", "usage: duo serve checkpoint=<run> [host=127.0.0.1 port=8000 key=value ...]\n\n"
                        "Serves the page at / and the JSON API (/v1/generate, /v1/generate/stream, /v1/model, "
                        "/healthz).", ServeConfig)


def main(args: list[str]) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from ..serve import ServeConfig
    from ..serve.app import create_app
    from .common import parse_args

    (config,) = parse_args(args, "serve", ServeConfig)
    app = create_app(config)
    engine = app.state.engine
    print(f"duo serve: {engine.loaded.path} ({engine.loaded.algo}, {engine.device}) at "
          f"http://{config.host}:{config.port}/  (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=2)
    return 0
