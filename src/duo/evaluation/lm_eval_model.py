"""An lm-evaluation-harness model: ``lm_eval --model duo --model_args checkpoint=...``.

Importing this module registers the model name ``"duo"`` (``lm_eval`` comes with the
optional extra ``duo-lm[eval]``). ``model_args``: ``checkpoint`` (a run, ``.ckpt``, export
folder or ``hf:<repo>``), ``nelbo_samples`` (Monte-Carlo times per request, default 16),
``batch_size`` (rows per forward pass), ``device``, ``seed``, ``sampler`` / ``steps`` (for
``generate_until``), ``use_ema``.

Estimators (docs/lm_eval.md):

- ``loglikelihood(context, continuation)``: AR models give the exact
  ``sum log p(cont_i | BOS, context, cont_<i)``. Diffusion models give minus the NELBO of
  the continuation with the context clamped: the sequence ``BOS + context +
  continuation`` is noised at the continuation's positions only (the context is never
  noised), the per-token NELBO integrand (MATH.md 2 / 8) is summed over the
  continuation, averaged over ``nelbo_samples`` times ``t`` stratified (antithetic)
  in ``[eps, 1]``, and Duo adds the prior KL per continuation token. A lower bound on
  ``log p(continuation | context)``; its Monte-Carlo noise shrinks like
  ``1 / sqrt(nelbo_samples)``. ``is_greedy``: AR, every continuation token is the argmax;
  diffusion, the denoiser's argmax from a fully noised continuation (t = 1) is the
  continuation.
- ``loglikelihood_rolling``: lm-eval's rolling windows of the model's length, each
  scored as above (the first window after BOS).
- ``generate_until``: the context clamped as a prefix, ``max_gen_toks`` new tokens from
  any sampler, cut at the first stop string.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..generation import decode, generate_text, resolve_sampler
from ..processes import uniform
from ..schedules import antithetic_times
from ..utils.seeding import derive_seed, generator

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - exercised through require_lm_eval
    LM = object
    register_model = None

__all__ = ["DuoLM", "require_lm_eval", "run_lm_eval"]

INSTALL = "pip install 'duo-lm[eval]'"


def require_lm_eval() -> None:
    if register_model is None:
        raise ValueError(f"lm-eval is not installed (the optional extra duo-lm[eval]); {INSTALL}")


def _load(checkpoint: str, use_ema: bool, device: str):
    from ..checkpoints import load_checkpoint  # lm-eval builds the model from a string

    return load_checkpoint(checkpoint, use_ema=use_ema, device=device)


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class DuoLM(LM):
    """A duo model (Duo, MDLM, SEDD or AR) as an lm-eval ``LM``; D3PM (discrete time) is refused."""

    def __init__(self, checkpoint: str | None = None, nelbo_samples: int = 16, batch_size: int | str = 32,
                 device: str = "cpu", seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 use_ema: bool = True, loaded: Any = None, **_: Any) -> None:
        require_lm_eval()
        super().__init__()
        if loaded is None:
            if not checkpoint:
                raise ValueError("the duo lm-eval model needs model_args checkpoint=<run, folder or hf:repo>")
            loaded = _load(str(checkpoint), _flag(use_ema), str(device))
        self.loaded = loaded
        self.method, self.tokenizer = loaded.method, loaded.tokenizer
        self.nelbo_samples = int(nelbo_samples)
        self.rows = 32 if str(batch_size).startswith("auto") else int(batch_size)
        if self.nelbo_samples < 1 or self.rows < 1:
            raise ValueError(f"nelbo_samples={nelbo_samples} and batch_size={batch_size} must be >= 1")
        self.seed = int(seed)
        self.sampler = resolve_sampler(self.method, sampler)
        self.steps = int(steps) if steps not in (None, "", "None") else None
        self.device_ = next(self.method.backbone.parameters()).device
        self.length = int(loaded.cfg.data.seq_len)
        self.ar = self.method.process.autoregressive
        if self.method.process.masked and getattr(self.method, "integrand", None) is None:
            raise ValueError(f"the duo lm-eval model scores continuous-time NELBOs; {self.method.name} "
                             "(discrete time) is not supported")
        self.method.backbone.eval()

    # --- lm-eval's interface ---------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            context, continuation = req.args
            pairs.append((self.tokenizer.encode(context) if context else [],
                          self.tokenizer.encode(continuation)))
        return self.score_tokens(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            ids = self.tokenizer.encode(req.args[0])
            # Diffusion scores BOS + context + continuation in one sequence of the model's length.
            window = self.length if self.ar else self.length - 1
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                ids, prefix_token=self.tokenizer.bos_id, max_seq_len=window, context_len=1)]
            # lm-eval's first window starts with the prefix token; score_tokens adds BOS itself.
            pairs = [(ctx[1:] if i == 0 and ctx[:1] == [self.tokenizer.bos_id] else ctx, cont)
                     for i, (ctx, cont) in enumerate(windows)]
            out.append(sum(lp for lp, _ in self.score_tokens(pairs)))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kwargs.get("max_gen_toks", 64))
            text = self.generate(context, max_new_tokens=new, seed=derive_seed(self.seed, i),
                                 temperature=None if _flag(kwargs.get("do_sample", False)) else
                                 float(kwargs.get("temperature", 0.0)))
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out

    # --- scoring ---------------------------------------------------------------------

    def _sequence(self, ctx: list[int], cont: list[int]) -> tuple[list[int], int]:
        """``BOS + ctx + cont`` cut from the left to fit, and the continuation's length."""
        if not cont:
            raise ValueError("an lm-eval request has an empty continuation; nothing to score")
        room = self.length + 1 if self.ar else self.length
        seq = [self.tokenizer.bos_id, *ctx, *cont][-room:]
        return seq, min(len(cont), len(seq) - 1)

    @torch.no_grad()
    def score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(log-likelihood, is_greedy)`` of each ``(context ids, continuation ids)``."""
        seqs = [self._sequence(ctx, cont) for ctx, cont in pairs]
        results: list[tuple[float, bool] | None] = [None] * len(seqs)
        by_length: dict[int, list[int]] = {}
        for i, (seq, _) in enumerate(seqs):
            by_length.setdefault(len(seq), []).append(i)
        score = self._score_ar if self.ar else self._score_diffusion
        for indices in by_length.values():
            per_chunk = max(1, self.rows // (1 if self.ar else self.nelbo_samples + 1))
            for start in range(0, len(indices), per_chunk):
                chunk = indices[start:start + per_chunk]
                x = torch.tensor([seqs[i][0] for i in chunk], dtype=torch.long, device=self.device_)
                n_cont = [seqs[i][1] for i in chunk]
                for i, r in zip(chunk, score(x, n_cont, chunk)):
                    results[i] = r
        return results  # type: ignore[return-value]

    def _score_ar(self, x: Tensor, n_cont: list[int], _: list[int]) -> list[tuple[float, bool]]:
        logp = self.method.next_token_logits(x[:, :-1]).float().log_softmax(-1)
        target = x[:, 1:]
        token_lp = logp.gather(-1, target[..., None])[..., 0]
        greedy = logp.argmax(-1) == target
        return [(float(token_lp[b, -n:].double().sum()), bool(greedy[b, -n:].all())) for b, n in enumerate(n_cont)]

    def _per_token(self, z: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The NELBO integrand (B, L) at times ``t`` (B,), the method's own formula."""
        m = self.method
        alpha, dalpha = m.schedule.alpha(t)[:, None], m.schedule.dalpha(t)[:, None]
        if m.process.masked:
            return m.nelbo_per_token(x, z, alpha, dalpha)
        return m.nelbo(z, z, x, alpha, dalpha)

    def _score_diffusion(self, x: Tensor, n_cont: list[int], ids: list[int]) -> list[tuple[float, bool]]:
        m, n, (B, L) = self.method, self.nelbo_samples, x.shape
        cont = torch.zeros(B, L, dtype=torch.bool, device=x.device)
        for b, k in enumerate(n_cont):
            cont[b, L - k:] = True
        rows, masks, times = [], [], []
        for b in range(B):
            # One generator per request: its estimate does not depend on its batch-mates.
            gen = generator(self.seed, ids[b], device=x.device)
            u = torch.rand((), generator=gen, dtype=torch.float64, device=x.device)
            t = antithetic_times(n, eps=float(m.cfg.eps), u=u, device=x.device)
            t = torch.cat([t, torch.ones(1, device=x.device)])  # + one row at t = 1 for is_greedy
            xb = x[b].expand(n + 1, L)
            z = m.process.noise(xb, m.schedule.alpha(t)[:, None], m.vocab_size, getattr(m, "mask_id", None), gen)
            rows.append(torch.where(cont[b], z, xb))  # the context is never noised
            masks.append(cont[b].expand(n + 1, L))
            times.append(t)
        z, mask, t = torch.cat(rows), torch.cat(masks), torch.cat(times)
        xs = x.repeat_interleave(n + 1, dim=0)
        per_token = self._per_token(z[:, :], xs, t).double().masked_fill(~mask, 0.0)
        prior = float(uniform.prior_kl(m.schedule.alpha(torch.tensor(1.0)), m.vocab_size)) \
            if not m.process.masked else 0.0
        sums = per_token.sum(-1).view(B, n + 1)[:, :n].mean(-1)
        last = torch.arange(B, device=x.device) * (n + 1) + n
        pred = m.denoiser(z[last], m.schedule.alpha(t[last])).argmax(-1)  # the denoiser takes alpha_t
        out = []
        for b, k in enumerate(n_cont):
            nelbo = float(sums[b]) + prior * k
            out.append((-nelbo if math.isfinite(nelbo) else -math.inf, bool((pred[b, L - k:] == x[b, L - k:]).all())))
        return out

    # --- generation ------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, context: str, *, max_new_tokens: int, seed: int = 0, temperature: float | None = 0.0) -> str:
        tok = self.tokenizer
        ids = tok.encode(context) if context else []
        room = self.length - 1 - max(1, min(max_new_tokens, self.length - 2))  # BOS, at least one new token
        ids = ids[-room:] if room > 0 else []
        seq_len = min(self.length, 1 + len(ids) + max_new_tokens)
        options: dict[str, Any] = {}
        if self.ar:
            if temperature is not None:
                options["temperature"] = temperature
            prefix = torch.tensor(ids, dtype=torch.long) if ids else None  # BOS added by generate_text
        else:
            prefix = torch.tensor([tok.bos_id, *ids], dtype=torch.long)
        gen = generate_text(self.method, tok, num_samples=1, seq_len=seq_len, seed=seed, sampler=self.sampler,
                            steps=self.steps, options=options, prefix=prefix, device=self.device_)
        return decode(tok, gen.tokens[:, 1 + len(ids):], getattr(self.method, "mask_id", None))[0]


if register_model is not None:
    register_model("duo")(DuoLM)


def run_lm_eval(loaded, tasks: list[str], *, include_path: str | None = None, nelbo_samples: int = 16,
                batch_size: int = 32, limit: int | None = None, seed: int = 0, num_fewshot: int | None = None,
                sampler: str | None = None, steps: int | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of a loaded model on ``tasks`` (names lm-eval knows, or
    tasks in YAML files under ``include_path``); returns ``{task: {metric: value}}`` and
    the settings, JSON-ready."""
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("lm-eval needs tasks=<name>[,<name>...]; e.g. tasks=lambada_openai,piqa")
    manager = TaskManager(include_path=include_path, include_defaults=include_path is None)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"lm-eval does not know task {unknown[0]!r}; list them with lm_eval --tasks list"
                         + (f" (or add a YAML file under {include_path})" if include_path else ""))
    model = DuoLM(loaded=loaded, nelbo_samples=nelbo_samples, batch_size=batch_size, seed=seed,
                  sampler=sampler, steps=steps)
    out = lm_eval.simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False,
                                  bootstrap_iters=0)
    results = {task: {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "alias"}
               for task, values in (out or {}).get("results", {}).items()}
    return {"tasks": results, "nelbo_samples": nelbo_samples if loaded.method.process.diffusion else None,
            "limit": limit, "seed": seed}
