"""The ASGI app: the page, the JSON API and its Server-Sent Events stream.

    GET  /                      the page (static/index.html; no CDN, works offline)
    GET  /healthz               {"status": "ok", "active": ..., "slots": ...}
    GET  /v1/model              model, samplers and their defaults, vocabulary, lengths, limits
    POST /v1/generate           {"prompt", "suffix", "sampler", "steps", "seed", "n", ...}
                                -> {"texts", "nfe", "seconds", "tokens_per_second", ...}
    POST /v1/generate/stream    the same body -> text/event-stream: ``state`` events
                                ({"step", "pieces", "changed", "num_changed"}; the last
                                one also "texts"), then ``done`` (the JSON of
                                /v1/generate) or ``error``

Bad requests get 400 ``{"error": "<one line>", "field": "<name>"}``; a full queue 503
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..generation import build_sampler, pick_sampler
from ..samplers.registry import samplers_for
from .config import ServeConfig
from .engine import Engine, Job, QueueFull
from .requests import BLANK, FIELDS, RequestError, max_length, parse_body, prepare

STATIC = Path(__file__).parent / "static"
POLL_SECONDS = 0.25  # how often a waiting response checks that its client is still there


def model_info(loaded, limits: ServeConfig) -> dict[str, Any]:
    method = loaded.method
    names = samplers_for(method.process.kind)
    default, default_steps = pick_sampler(loaded, None, None)  # resolved: the method's default when unset
    longest = max_length(loaded, limits)
    samplers = {name: {"default_steps": getattr(build_sampler(method, name), "default_steps", None)}
                for name in names}
    return {
        "checkpoint": str(loaded.path), "algo": loaded.algo, "process": method.process.kind,
        "vocab_size": loaded.tokenizer.vocab_size, "model_vocab_size": method.vocab_size,
        "max_length": longest, "seq_len": min(loaded.cfg.data.seq_len, longest),
        "default_sampler": default, "default_steps": default_steps,
        "samplers": samplers, "blank": BLANK,
        "limits": {"max_steps": limits.max_steps, "max_samples": limits.max_samples, "queue": limits.queue},
        "config": {"model": _plain(loaded.cfg.model), "preset": loaded.cfg.model_preset},
        "fields": {name: default for name, (_, _, default) in FIELDS.items()},
    }


def _plain(obj) -> Any:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(obj).items() if isinstance(v, (int, float, str, bool, type(None)))}


def _bad(err: RequestError) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=400)


def _busy(err: QueueFull) -> JSONResponse:
    return JSONResponse({"error": str(err), "field": None}, status_code=503,
                        headers={"Retry-After": str(err.retry_after)})


def create_app(config: ServeConfig, loaded=None, device=None) -> FastAPI:
    """The app for ``config``; loads the checkpoint once unless ``loaded`` is given."""
    import torch

    from ..commands.common import resolve_device

    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if loaded is None:
        from ..checkpoints import load_checkpoint

        if not config.checkpoint:
            raise ValueError("duo serve needs checkpoint=<a run directory, .ckpt, folder or hf:<repo>>")
        device = resolve_device(config.device)
        loaded = load_checkpoint(config.checkpoint, use_ema=config.use_ema, device=device)
    device = torch.device(device) if device is not None else next(loaded.backbone.parameters()).device
    engine = Engine(loaded, config, device)
    info = model_info(loaded, config)
    app = FastAPI(title="duo serve", docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    app.router.add_event_handler("shutdown", engine.close)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **engine.status()}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return info

    async def admit(request: Request, stream: bool) -> Job | JSONResponse:
        """The request's job holding a slot, or the response refusing it (400 or 503)."""
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            return _bad(RequestError(f"the body is not valid JSON: {str(err).splitlines()[0]}"))
        try:
            return engine.submit(prepare(loaded, parse_body(body), config), stream, asyncio.get_running_loop())
        except RequestError as err:
            return _bad(err)
        except QueueFull as err:
            return _busy(err)

    async def next_event(request: Request, job: Job) -> tuple[str, dict] | None:
        """The job's next event; None when its client has gone."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return None

    @app.post("/v1/generate")
    async def generate(request: Request):
        job = await admit(request, stream=False)
        if not isinstance(job, Job):
            return job
        try:
            while True:
                event = await next_event(request, job)
                if event is None:
                    return JSONResponse({"error": "client disconnected"}, status_code=499)
                kind, data = event
                if kind == "done":
                    return data
                if kind == "error":
                    return JSONResponse(data, status_code=500)
        finally:
            engine.release(job)

    @app.post("/v1/generate/stream")
    async def generate_stream(request: Request):
        job = await admit(request, stream=True)
        if not isinstance(job, Job):
            return job

        async def events():
            try:
                yield ": admitted\n\n"
                while True:
                    event = await next_event(request, job)
                    if event is None:
                        return
                    kind, data = event
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                    if kind in ("done", "error"):
                        return
                    if await request.is_disconnected():
                        return
            finally:  # normal end, a closed connection or a cancelled task: the slot is free
                engine.release(job)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
