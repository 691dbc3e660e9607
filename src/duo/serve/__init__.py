"""``duo serve``: a page that shows uniform-state diffusion denoising step by step, and a
JSON / Server-Sent Events API in front of one loaded model (FastAPI + uvicorn, the
``duo-lm[serve]`` extra).

    from duo.serve import ServeConfig, create_app
    app = create_app(ServeConfig(checkpoint="runs/duo-..."))   # any ASGI server runs it

See :mod:`duo.serve.app` for the routes and :mod:`duo.serve.engine` for batching,
slots and determinism (the same seed gives the texts of ``duo sample``).
"""

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # imports FastAPI: only when asked for
        from .app import create_app

        return create_app
    raise AttributeError(name)
