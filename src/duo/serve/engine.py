"""The serving engine: one worker thread owns the model; a bounded set of slots admits
requests; requests whose results are identical by construction run as one batch.

Batching and determinism. A request's texts must equal ``duo sample`` with the same
``num_samples`` and ``seed``. The samplers draw all rows of a batch from one generator,
so rows of different requests (or a request of n rows inside a batch of more) would draw
different noise than they do alone. The engine therefore batches only requests that share
the whole configuration, seed and prompt (the :class:`Prepared` key): they run once and
each gets the result. Every other request runs on its own, in arrival order. The worker
waits ``batch_wait_ms`` after taking a request, to collect identical ones.

Slots. A request holds a slot from admission until its response ends: queued, running or
streaming. With all ``queue`` slots held, admission fails (503 with Retry-After). A
client that goes away (a closed stream, a dropped connection) frees its slot at once; a
batch whose clients have all gone stops at the next network call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from typing import Any, Callable

import torch

from ..evaluation import generate_batched, sample
from .config import ServeConfig
from .requests import Prepared

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy (all request slots taken); retry in {retry_after} s")
        self.retry_after = retry_after


class _Aborted(Exception):
    """Every client of a running batch has gone."""


class Job:
    """One admitted request: its plan, where its events go, whether its client left."""

    def __init__(self, prepared: Prepared, stream: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.prepared, self.stream, self.loop = prepared, stream, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.released = False
        self.submitted = time.perf_counter()

    def post(self, event: str, data: dict[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (event, data))
        except RuntimeError:  # the event loop has closed (server shutting down)
            self.cancelled.set()


class _Watched:
    """A method whose network entry points report each input state first: ``denoiser`` and
    ``score`` their ``z``; the autoregressive ``next_token_logits`` its context and cached
    ``decode`` the ids seen so far, both padded to ``length`` with ``pad_id``. It adds no
    computation and draws no random numbers, so results are unchanged."""

    def __init__(self, method, on_state: Callable[[torch.Tensor], None], length: int, pad_id: int) -> None:
        self._method, self._on_state = method, on_state
        self._length, self._pad_id = length, pad_id
        self._seen: torch.Tensor | None = None  # cached decoding: the ids the cache holds

    def _padded(self, ids: torch.Tensor) -> torch.Tensor:
        missing = self._length - ids.shape[1]
        return torch.cat([ids, ids.new_full((ids.shape[0], missing), self._pad_id)], 1) if missing > 0 else ids

    def __getattr__(self, name: str):
        attr = getattr(self._method, name)  # AttributeError where the method has none
        if name in ("denoiser", "score"):
            def watched(z, alpha_t):
                self._on_state(z)
                return attr(z, alpha_t)
        elif name == "next_token_logits":
            def watched(ids):
                self._on_state(self._padded(ids))
                return attr(ids)
        elif name == "new_cache":
            def watched(*args, **kwargs):
                self._seen = None
                return attr(*args, **kwargs)
        elif name == "decode":
            def watched(ids, cache):
                self._seen = ids if self._seen is None else torch.cat([self._seen, ids], 1)
                self._on_state(self._padded(self._seen))
                return attr(ids, cache)
        else:
            return attr
        return watched


class Engine:
    def __init__(self, loaded, limits: ServeConfig, device: torch.device) -> None:
        self.loaded, self.limits, self.device = loaded, limits, device
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._active = 0
        self._stop = False
        self._pieces: dict[int, str] = {}
        self.stats = {"served": 0, "batches": 0, "aborted": 0, "rejected": 0, "run_seconds": 0.0}
        self._thread = threading.Thread(target=self._work, name="duo-serve-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ admission
    def submit(self, prepared: Prepared, stream: bool, loop: asyncio.AbstractEventLoop) -> Job:
        with self._cond:
            if self._active >= self.limits.queue:
                self.stats["rejected"] += 1
                raise QueueFull(self._retry_after())
            job = Job(prepared, stream, loop)
            self._active += 1
            self._pending.append(job)
            self._cond.notify()
        return job

    def release(self, job: Job) -> None:
        """The request's response has ended (or its client left): free its slot."""
        job.cancelled.set()
        with self._cond:
            if not job.released:
                job.released = True
                self._active -= 1

    def _retry_after(self) -> int:
        per_batch = self.stats["run_seconds"] / max(self.stats["batches"], 1)
        return max(1, math.ceil(per_batch * (len(self._pending) + 1)))

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"active": self._active, "queued": len(self._pending), "slots": self.limits.queue,
                    **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.stats.items()}}

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
            time.sleep(self.limits.batch_wait_ms / 1000)
            with self._cond:
                self._pending = [j for j in self._pending if not j.cancelled.is_set()]
                if not self._pending:
                    continue
                key = self._pending[0].prepared.key
                group = [j for j in self._pending if j.prepared.key == key]
                self._pending = [j for j in self._pending if j.prepared.key != key]
            try:
                self._run(group)
            except _Aborted:
                self.stats["aborted"] += 1
            except Exception as err:  # a bug or a device error: tell the clients, keep serving
                log.exception("generation failed")
                for job in group:
                    job.post("error", {"error": f"generation failed: {type(err).__name__}: {err}"})

    def _piece(self, token: int) -> str:
        if token not in self._pieces:
            tok = self.loaded.tokenizer
            self._pieces[token] = tok.decode([token], skip_special_tokens=True) if token < tok.vocab_size else "\u2591"
        return self._pieces[token]

    def state_event(self, step: int, z: torch.Tensor, previous: torch.Tensor | None,
                    texts: list[str] | None = None) -> dict[str, Any]:
        """A state for the stream: per sample its tokens' pieces and the positions that
        changed since the previous state (both on the CPU); ``texts`` (the final state's)
        when given."""
        rows = z.tolist()
        changed = (z != previous).nonzero().tolist() if previous is not None and previous.shape == z.shape else []
        per_row: list[list[int]] = [[] for _ in rows]
        for r, pos in changed:
            per_row[r].append(pos)
        event = {"step": step, "pieces": [[self._piece(t) for t in row] for row in rows],
                 "changed": per_row, "num_changed": len(changed)}
        if texts is not None:
            event["texts"] = texts
        return event

    def _run(self, group: list[Job]) -> None:
        prepared = group[0].prepared
        plan = prepared.plan
        streams = [j for j in group if j.stream]
        state = {"step": 0, "previous": None}

        def on_state(z: torch.Tensor) -> None:
            if all(j.cancelled.is_set() for j in group):
                raise _Aborted
            live = [j for j in streams if not j.cancelled.is_set()]
            if live:  # only then a copy to the CPU (a device sync); the stream needs no other
                z = z.cpu()
                event = self.state_event(state["step"], z, state["previous"])
                for job in live:
                    job.post("state", event)
                state["previous"] = z
            state["step"] += 1

        watched = _Watched(self.loaded.method, on_state, plan.seq_len, self.loaded.tokenizer.vocab_size)
        loaded = dataclasses.replace(self.loaded, method=watched)
        started = time.perf_counter()
        if prepared.clamp is None:
            gen = sample(loaded, plan, device=self.device)
        else:
            cfg = plan.config
            suffix = torch.tensor(plan.suffix, dtype=torch.long, device=self.device) if plan.suffix else None
            gen = generate_batched(
                loaded, num_samples=cfg.num_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                seq_len=plan.seq_len, sampler=plan.sampler, steps=plan.steps, options=plan.options,
                device=self.device, suffix=suffix, clamp=prepared.clamp, protocol=cfg.protocol)
        seconds = time.perf_counter() - started
        self.stats["batches"] += 1
        self.stats["run_seconds"] += seconds
        live = any(not j.cancelled.is_set() for j in streams)
        final = self.state_event(state["step"], gen.tokens.cpu(), state["previous"], gen.texts) if live else None
        for job in group:
            if job.cancelled.is_set():
                continue
            self.stats["served"] += 1  # before the answer leaves: a client that has it sees it counted
            if final is not None and job.stream:
                job.post("state", final)
            job.post("done", {
                "texts": gen.texts, "nfe": gen.nfe, "seconds": round(gen.seconds, 6),
                "tokens_per_second": round(gen.tokens_per_second, 2), "sampler": plan.sampler,
                "steps": plan.steps, "seed": plan.config.seed, "n": plan.config.num_samples,
                "seq_len": plan.seq_len, "batched": len(group),
                "queue_seconds": round(started - job.submitted, 6)})
