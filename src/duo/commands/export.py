"""``duo export RUN OUT [weights=ema|raw] [sampler=... steps=... protocol=...] [license=...]``

Writes a Hub-ready folder (see :mod:`duo.interop.hf_model`): ``config.json``,
``model.safetensors`` (EMA weights by default), the tokenizer's files,
``sampling_config.json`` and a model card ``README.md`` whose numbers come from the run's
``eval/results.json`` when it has one. ``load_checkpoint(OUT)``, ``duo sample
checkpoint=OUT`` and ``transformers.AutoModel.from_pretrained(OUT)`` read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_dir

TAGS = {"duo": ["uniform-state-diffusion", "duo"], "mdlm": ["masked-diffusion", "mdlm"], "ar": ["autoregressive"]}
CARD_FILE, SAMPLING_FILE = "README.md", "sampling_config.json"


@dataclass
class ExportArgs:
    weights: str = "ema"
    sampler: str | None = None  # the folder's default sampler (default: the run's)
    steps: int | None = None
    protocol: str = "ours"
    license: str = "apache-2.0"
    device: str = "cpu"


def parse(args: list[str], command: str, n_positional: int, usage: str) -> tuple[list[str], ExportArgs, dict]:
    """Positional arguments, then ``key=value`` (``ExportArgs`` fields, or ``extra`` keys)."""
    from .common import parse_positional

    positional, (a,), extra = parse_positional(args, command, n_positional, usage, ExportArgs,
                                               extra=("private", "message", "token"))
    if a.weights not in ("ema", "raw"):
        raise ValueError(f"weights={a.weights!r} must be ema or raw")
    return positional, a, extra


def _sampling_config(loaded, a: ExportArgs) -> dict[str, Any]:
    from ..evaluation import pick_sampler
    from ..generation import build_sampler
    from ..samplers import SamplingConfig

    SamplingConfig(sampler=a.sampler, steps=a.steps, protocol=a.protocol).validate()
    name, steps = pick_sampler(loaded, a.sampler, a.steps)
    seq_len = loaded.cfg.data.seq_len
    if name == "ar":
        steps, nfe = None, seq_len - 1  # one call per generated token after BOS
    else:
        steps = steps or build_sampler(loaded.method, name).default_steps
        nfe = steps + (1 if a.protocol == "paper" else 0)
    return {"sampler": name, "steps": steps, "nfe": nfe, "protocol": a.protocol, "seq_len": seq_len}


def _results(run_dir: Path | None) -> dict[str, Any]:
    path = run_dir / "eval" / "results.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def card_metrics(results: dict[str, Any], run: str) -> list[dict[str, Any]]:
    """The run's measured numbers, each with the command that measures it."""
    out = []
    commands = results.get("commands") or {}
    if isinstance(results.get("ppl"), dict) and "ppl" in results["ppl"]:
        r = results["ppl"]
        out.append({"key": "ppl", "name": "Validation perplexity" + (" (upper bound)" if r.get("bound") else ""),
                    "type": "perplexity", "value": r["ppl"], "bound": bool(r.get("bound")),
                    "dataset": r.get("corpus"), "split": r.get("split"),
                    "command": commands.get("ppl") or results.get("command") or f"duo eval checkpoint={run} metrics=ppl"})
    if isinstance(results.get("gen_ppl"), dict) and "gen_ppl" in results["gen_ppl"]:
        g = results["gen_ppl"]
        settings = " ".join(f"{k}={g[k]}" for k in ("sampler", "steps", "num_samples", "seq_len", "judge")
                            if g.get(k) is not None)
        if g.get("protocol", "ours") != "ours":
            settings += f" protocol={g['protocol']}"
        out.append({"key": "gen_ppl", "name": f"Gen PPL (judge {g.get('judge', '?')}, entropy "
                    f"{g.get('entropy', float('nan')):.3f})", "type": "gen_ppl", "value": g["gen_ppl"],
                    "entropy": g.get("entropy"), "dataset": None, "split": None,
                    "command": commands.get("gen_ppl") or results.get("command")
                    or f"duo eval checkpoint={run} metrics=gen-ppl {settings}".strip()})
    return out


def _local(corpus: str | None) -> bool:
    return not corpus or corpus.startswith(("/", ".", "~")) or Path(corpus).suffix in (".txt", ".jsonl", ".json")


def model_card(loaded, sampling: dict[str, Any], results: dict[str, Any], run: str, name: str,
               steps: int | None, license_: str) -> str:
    import yaml

    cfg = loaded.cfg
    corpus = cfg.data.corpus
    metrics = card_metrics(results, run)
    meta: dict[str, Any] = {"library_name": "duo", "license": license_, "pipeline_tag": "text-generation",
                            "tags": ["duo", "discrete-diffusion", *TAGS[loaded.algo], "text-generation"]}
    if not _local(corpus):
        meta["datasets"] = [corpus.removeprefix("hf:")]
    if metrics:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-generation", "name": "Language modeling"},
            "dataset": {"name": corpus, "type": corpus, **({"split": m["split"]} if m["split"] else {})},
            "metrics": [{"type": m["type"], "value": round(float(m["value"]), 4), "name": m["name"]}],
        } for m in metrics]}]
    model = cfg.model
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"A {loaded.algo.upper()} language model trained with [duo](https://pypi.org/project/duo-lm/) "
             f"({model.n_blocks} blocks, hidden size {model.hidden_size}, {model.n_heads} heads, "
             f"context {cfg.data.seq_len} tokens, {loaded.tokenizer.vocab_size}-token vocabulary, "
             f"trained on `{Path(corpus).name if _local(corpus) else corpus}`"
             + (f" for {steps} steps" if steps is not None else "") + ").", "",
             "## Results", ""]
    if metrics:
        lines += ["| metric | value | command |", "|---|---|---|"]
        for m in metrics:
            lines.append(f"| {m['name']} | {'<= ' if m.get('bound') else ''}{float(m['value']):.4g} | "
                         f"`{m['command']}` |")
    else:
        lines.append(f"Not measured yet: `duo eval checkpoint={run} metrics=ppl,gen-ppl`.")
    steps_text = f", {sampling['steps']} steps" if sampling["steps"] is not None else ""
    lines += ["", "## Use", "", "```python",
              "from duo.interop import register_auto_classes",
              "from transformers import AutoModel", "",
              "register_auto_classes()  # DuoConfig / DuoModel with transformers' Auto classes (no remote code)",
              "model = AutoModel.from_pretrained(\"<this repo or folder>\")",
              f"print(model.sample(prompt=\"The\", steps={sampling['steps'] or 'None'}, "
              f"sampler=\"{sampling['sampler']}\"))", "```", "",
              "or `duo sample checkpoint=hf:<repo>`; `duo.checkpoints.load_checkpoint(\"hf:<repo>\")` gives "
              "the method, backbone and tokenizer.", "",
              f"Default sampling (`{SAMPLING_FILE}`): {sampling['sampler']}{steps_text}, {sampling['nfe']} "
              f"network evaluations, protocol {sampling['protocol']}.", ""]
    return "\n".join(lines)


def _training_steps(src: str) -> int | None:
    from ..checkpoints import resolve_checkpoint

    try:
        p = resolve_checkpoint(src)
        if p.suffix != ".ckpt":
            return None
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the step count is optional information
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if isinstance(step, int) else None


def write_export(loaded, out: Path, *, sampling: dict[str, Any], card: str) -> Path:
    """The folder's files, written into ``out`` (which must not exist yet)."""
    from ..interop.hf_model import export_config
    from ..utils.checksums import write_safetensors

    out.mkdir(parents=True)
    loaded.tokenizer.save(out)  # duo_tokenizer.json and the backend's files, at the top level
    state = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in loaded.backbone.state_dict().items()}
    write_safetensors(state, out / "model.safetensors", {"format": "pt", "algo": loaded.algo})
    (out / "config.json").write_text(json.dumps(export_config(loaded), indent=2) + "\n", encoding="utf-8")
    (out / SAMPLING_FILE).write_text(json.dumps(sampling, indent=2) + "\n", encoding="utf-8")
    (out / CARD_FILE).write_text(card, encoding="utf-8")
    return out


def export_run(src: str, out: str | Path, a: ExportArgs | None = None, *, name: str | None = None) -> Path:
    """Load ``src`` (a run, checkpoint or folder) and write its export to ``out``, atomically."""
    from ..checkpoints import load_checkpoint
    from ..evaluation import run_dir_of

    a = a or ExportArgs()
    out = Path(out).expanduser()
    with atomic_dir(out) as tmp:
        loaded = load_checkpoint(src, use_ema=a.weights == "ema", device=a.device)
        sampling = _sampling_config(loaded, a)
        run_dir = run_dir_of(loaded.path) if Path(src).expanduser().exists() else None
        card = model_card(loaded, sampling, _results(run_dir), str(src), name or out.name,
                          _training_steps(src), a.license)
        write_export(loaded, tmp, sampling=sampling, card=card)
    return out


def main(args: list[str]) -> int:
    (src, out), a, extra = parse(args, "export", 2, "duo export RUN OUT [weights=ema|raw] [sampler=...] "
                                 "[steps=...] [protocol=ours|paper] [license=...]")
    if extra:
        raise ValueError(f"unknown key {next(iter(extra))!r} for duo export")
    path = export_run(src, out, a)
    print(f"exported {src} -> {path} ({', '.join(sorted(p.name for p in path.iterdir()))})")
    return 0
