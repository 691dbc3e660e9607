"""Recipes: the settings of the papers' runs, one name per table row.

A :class:`Recipe` holds the ``key=value`` overrides that reproduce one training,
distillation or evaluation setting of "The Diffusion Duality" (Chapter I, ICML 2025)
or its sequel ("Chapter II: Psi-samplers", the Duo++ curriculum), as read from the
official scripts (``scripts/*.sh`` and ``configs/`` of github.com/s-sahoo/duo, branches
``main`` and ``ch-1``). ``duo train recipe=NAME`` and ``duo distill recipe=NAME`` apply a
recipe after the defaults (or the teacher's settings) and before the user's own
overrides, which therefore win; ``duo recipes`` lists them. Evaluation recipes hold
``duo eval`` keys; :func:`expand_args` turns ``recipe=NAME`` into them.

Where duo's defaults already equal the official ones (the log-linear schedule with
eps = 1e-3, AdamW beta1 0.9 without weight decay, gradient clipping at 1.0,
antithetic time sampling, the small DiT's dropout 0.1) a recipe does not repeat them.
docs/reproduce.md lists every recipe's values; tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from .utils.typed_config import ConfigError, parse_overrides

__all__ = ["RECIPES", "Recipe", "expand_args", "format_value", "get_recipe", "recipe_update", "check_recipe_algo"]

Command = Literal["train", "distill", "eval"]


@dataclass(frozen=True)
class Recipe:
    """One paper setting. ``overrides`` maps dotted keys to values, in the spelling of
    the command that runs it (``distill.*`` for ``duo distill``, the flat ``duo eval``
    keys for evaluations); ``sweep`` lists values a table varies (e.g. ``steps``), the
    first of which is also in ``overrides``; ``source`` names the official files."""

    name: str
    command: Command
    paper: str
    table: str
    description: str
    overrides: Mapping[str, Any]
    source: str
    notes: str = ""
    sweep: Mapping[str, tuple] = field(default_factory=dict)

    def args(self) -> list[str]:
        """The overrides as ``key=value`` command-line arguments."""
        return [f"{key}={format_value(value)}" for key, value in self.overrides.items()]

    def command_line(self) -> str:
        """How to run it."""
        if self.command == "eval":
            return "duo eval checkpoint=<CHECKPOINT> " + " ".join(self.args())
        if self.command == "distill":
            return f"duo distill checkpoint=<DUO CHECKPOINT> recipe={self.name}"
        return f"duo train recipe={self.name}"


def format_value(value: Any) -> str:
    """A value as ``key=value`` text that :func:`duo.utils.typed_config.parse_value` reads back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


# --- what the official runs share (configs/config.yaml, model/small.yaml, lr_scheduler/constant_warmup.yaml)
_TRAIN = {
    "model": "small",
    "trainer.max_steps": 1_000_000,
    "trainer.batch_size": 512,
    "trainer.lr": 3e-4,
    "trainer.warmup_steps": 2500,
    "trainer.lr_schedule": "constant",
    "trainer.ema": 0.9999,
    "trainer.beta2": 0.999,  # duo's default (0.95) suits its short runs; the papers' is 0.999
    "trainer.val_every": 5000,
    # Not a paper setting: the official runs save every 500 steps and keep every file; duo
    # keeps each periodic checkpoint too, so 1M steps get one per 10K (last.ckpt with it).
    "trainer.ckpt_every": 10_000,
}
# configs/data/lm1b.yaml (wrap: False) and lm1b-wrap.yaml (wrap: True), model.length=128 in the scripts
_LM1B = {"data": "lm1b", "data.tokenizer": "bert-base-uncased", "data.seq_len": 128, "model.max_seq_len": 128}
_DATA = {
    "lm1b": {**_LM1B, "data.packing": "pad"},
    "lm1b-wrap": {**_LM1B, "data.packing": "wrap"},
    # configs/data/openwebtext-split.yaml (wrap: True, GPT-2), model.length=1024
    "owt": {"data": "openwebtext", "data.tokenizer": "gpt2", "data.packing": "wrap", "data.seq_len": 1024,
            "model.max_seq_len": 1024},
}
# The scripts' hard-coded curriculum ranges (algo.curriculum.gamma_min / gamma_max).
_GAMMA = {"lm1b": (-3.5, -1.75), "lm1b-wrap": (-3.5, -1.75), "owt": (-3.55, -1.85)}
_SCRIPT = {"lm1b": "lm1b", "lm1b-wrap": "lm1b_{}_sentencepacking", "owt": "owt"}
_WHAT = {"lm1b": "LM1B without sentence packing (padded, as MDLM/SEDD)",
         "lm1b-wrap": "LM1B with sentence packing (wrapped, as D3PM)", "owt": "OpenWebText"}
_TABLE = {"lm1b": "LM1B test perplexity", "lm1b-wrap": "LM1B test perplexity", "owt": "OWT test perplexity"}


def _script(method: str, data: str) -> str:
    name = _SCRIPT[data]
    stem = name.format(method) if "{}" in name else f"{name}_{method}"
    return f"scripts/train_{stem}.sh"


def _curriculum(data: str) -> dict[str, Any]:
    low, high = _GAMMA[data]
    # gumbel_tau_log10_start = end = -3 (tau = 1e-3, constant), start = 0, end = 500000 of 1M steps
    return {"algo.tau": 1e-3, "algo.curriculum_fraction": 0.5, "algo.gamma_min": low, "algo.gamma_max": high}


def _train_recipes() -> list[Recipe]:
    out: list[Recipe] = []
    for data in ("lm1b", "lm1b-wrap", "owt"):
        base = {"algo": "duo", **_TRAIN, **_DATA[data]}
        duo_script = _script("duo", data)
        out.append(Recipe(
            f"duo-{data}", "train", "Chapter I", _TABLE[data],
            f"Duo with the full Gaussian-relaxation curriculum, {_WHAT[data]}",
            {**base, "algo.curriculum": "full", **_curriculum(data)}, f"ch-1:{duo_script}, main:{duo_script}",
            "curriculum.mode=simple: the full relaxation; the script's 500000-step curriculum is "
            "algo.curriculum_fraction=0.5 of 1M steps"))
        out.append(Recipe(
            f"duopp-{data}", "train", "Chapter II", "Duo++ curriculum",
            f"Duo++: the memory-efficient top-k curriculum, {_WHAT[data]}",
            {**base, "algo.curriculum": "topk", "algo.curriculum_k": 2, "algo.poly_fit_degree": 9,
             **_curriculum(data)}, f"main:{duo_script} (with algo.curriculum.mode=poly9)",
            "the official scripts switch to Duo++ by replacing mode=simple with mode=poly9 (README); they do "
            "not set top_k (config default -1), so k = 2 follows Chapter II's text (MATH.md 5)"))
        out.append(Recipe(
            f"udlm-{data}", "train", "Chapter I", _TABLE[data],
            f"UDLM baseline: uniform-state diffusion without curriculum, {_WHAT[data]}",
            {**base, "algo.curriculum": "none"}, "configs/config.yaml (no UDLM script in the official repo)",
            "the paper's UDLM row comes from the UDLM work; this is the same model and loss trained "
            "with the shared settings"))
        out.append(Recipe(
            f"mdlm-{data}", "train", "Chapter I", _TABLE[data], f"MDLM baseline, {_WHAT[data]}",
            {"algo": "mdlm", **_TRAIN, **_DATA[data], "algo.time_conditioning": False},
            _script("mdlm", data) + ", configs/algo/mdlm.yaml"))
        ar_source = "configs/config.yaml (no train_owt_ar.sh in the official repo)" if data == "owt" \
            else _script("ar", data)
        out.append(Recipe(
            f"ar-{data}", "train", "Chapter I", _TABLE[data], f"Autoregressive baseline, {_WHAT[data]}",
            {"algo": "ar", **_TRAIN, **_DATA[data]}, ar_source))
    order = ("duo", "duopp", "udlm", "mdlm", "ar")
    return sorted(out, key=lambda r: order.index(r.name.split("-")[0]))  # stable: data order kept


_DCD = Recipe(
    "dcd-owt", "distill", "Chapter I", "Gen PPL vs steps (Duo + DCD)",
    "Discrete Consistency Distillation of the OWT Duo model: 5 rounds x 10K steps, official protocol",
    {"distill.rounds": 5, "distill.steps_per_round": 10_000, "distill.T0": 512, "distill.loss": "reverse",
     "distill.teacher": "student", "distill.gamma_min": -4.0, "distill.gamma_max": -1.0,
     "distill.time_draw": "paper", "distill.student_init": "raw",
     "trainer.batch_size": 128, "trainer.lr": 6e-5, "trainer.warmup_steps": 500, "trainer.lr_schedule": "constant",
     "trainer.ema": 0.9999, "trainer.beta2": 0.999, "trainer.val_every": 1000, "trainer.val_batches": 8},
    "main:scripts/distil_owt.sh, configs/algo/distillation.yaml",
    "max_steps 50000 = rounds x steps_per_round (update_teacher_every=10000); teacher_ema=False; "
    "kl-bwd = reverse KL. The script passes training.ema=0.999, but the student is loaded from the "
    "checkpoint with its EMA state, whose decay (0.9999) replaces it; trainer.ema=0.9999 says so")

_STEPS = (1024, 512, 256, 128, 64, 32, 16, 8)
_GEN = {"metrics": "gen-ppl", "judge": "gpt2-large", "protocol": "paper"}
# The official loader's samples: loader.eval_batch_size x sampling.num_sample_batches on one GPU.
_EVAL = [
    Recipe("ppl-owt", "eval", "Chapter I", "OWT test perplexity",
           "validation perplexity on OpenWebText's held-out documents (the bound and the diffusion term)",
           {"metrics": "ppl", "data": "openwebtext"}, "main:scripts/eval_owt_{duo,mdlm,ar}.sh",
           "the papers report the diffusion term alone (results.json has both)"),
    Recipe("ppl-lm1b", "eval", "Chapter I", "LM1B test perplexity",
           "test perplexity on LM1B (packing and length as the checkpoint was trained)",
           {"metrics": "ppl", "data": "lm1b"}, "main:scripts/eval_lm1b_duo.sh"),
    Recipe("zero-shot-owt", "eval", "Chapter I", "zero-shot perplexity",
           "zero-shot perplexity of an OWT model on the official script's eight corpora",
           {"metrics": "zero-shot",
            "corpora": "ag_news,scientific_papers_pubmed,scientific_papers_arxiv,lambada,wikitext-2,wikitext-103,"
                       "ptb,lm1b"},
           "main:scripts/zero_shot_{duo,mdlm,ar}.sh",
           "the official runs set data.insert_valid_eos=False and read LM1B with GPT-2 (lm1b-gpt2)"),
    Recipe("genppl-owt", "eval", "Chapter I", "Gen PPL vs steps",
           "Gen PPL (GPT-2 Large) and entropy of 800 samples with the model's default sampler "
           "(ancestral for Duo, MDLM's for MDLM, AR's for AR), swept over steps",
           {**_GEN, "steps": 1024, "num_samples": 800, "batch_size": 8},
           "main:scripts/gen_ppl_owt_{duo,mdlm,ar}.sh",
           "8 samples x 100 batches; a distilled checkpoint's default sampler is greedy-tail",
           {"steps": _STEPS}),
    Recipe("genppl-owt-greedy", "eval", "Chapter I", "Gen PPL vs steps (greedy tail, with and without DCD)",
           "Gen PPL (GPT-2 Large) and entropy of 800 samples with the greedy-tail sampler, swept over steps",
           {**_GEN, "sampler": "greedy_tail", "steps": 1024, "num_samples": 800, "batch_size": 8},
           "main:scripts/gen_ppl_owt_duo.sh with sampling.noise_removal=greedy", "", {"steps": _STEPS}),
    Recipe("genppl-lm1b-greedy", "eval", "Chapter I", "LM1B Gen PPL",
           "Gen PPL (GPT-2 Large) of 960 LM1B samples (length 128) with the greedy-tail sampler",
           {**_GEN, "sampler": "greedy_tail", "steps": 32, "num_samples": 960, "batch_size": 64},
           "main:scripts/gen_ppl_lm1b_duo.sh", "64 samples x 15 batches; the script's steps=32"),
    Recipe("psi-owt-max-capped", "eval", "Chapter II", "Psi-samplers on OWT (ReMDM cap)",
           "Psi-sampler, max-capped kappa rule (eta 0.01), 256 steps, top-p 0.9, 512 samples; Duo or MDLM",
           {**_GEN, "sampler": "psi", "steps": 256, "eta": 0.01, "kappa_mode": "paper-max-capped", "top_p": 0.9,
            "num_samples": 512, "batch_size": 16},
           "main:scripts/psi_samplers/owt/{duo,mdlm}_max_capped_remdm.sh", "16 samples x 32 batches"),
    Recipe("psi-owt-max-rescale", "eval", "Chapter II", "Psi-samplers on OWT (ReMDM rescale)",
           "Psi-sampler, the official max-rescale rule (eta 0.05), 256 steps, top-p 0.9, 512 samples; Duo or MDLM",
           {**_GEN, "sampler": "psi", "steps": 256, "eta": 0.05, "kappa_mode": "paper-max-rescale", "top_p": 0.9,
            "num_samples": 512, "batch_size": 16},
           "main:scripts/psi_samplers/owt/{duo,mdlm}_max_rescale_eta.sh", "16 samples x 32 batches"),
]

RECIPES: dict[str, Recipe] = {r.name: r for r in [*_train_recipes(), _DCD, *_EVAL]}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)} (see duo recipes)")
    return RECIPES[name]


def recipe_update(name: str) -> dict[str, Any]:
    """The nested override mapping of a training or distillation recipe, as
    :func:`duo.config.build_config` merges it (``distill.*`` keys become ``algo.*``)."""
    recipe = get_recipe(name)
    if recipe.command == "eval":
        raise ConfigError(f"recipe {name!r} is an evaluation protocol: run {recipe.command_line()}")
    return parse_overrides([("algo." + a[8:]) if a.startswith("distill.") else a for a in recipe.args()])


def check_recipe_algo(name: str, algo: str, base_algo: str | None = None) -> None:
    """A distillation recipe needs ``duo distill`` (algo=distill), a training one ``duo train``
    (``base_algo``: the method of the config the recipe was applied to, e.g. a student's)."""
    recipe = get_recipe(name)
    if recipe.command == "distill" and algo != "distill":
        raise ConfigError(f"recipe {name!r} distils a trained Duo model: run {recipe.command_line()}")
    if recipe.command == "train" and "distill" in (algo, base_algo):
        raise ConfigError(f"recipe {name!r} trains from scratch: run {recipe.command_line()}")


def expand_args(command: str, args: list[str]) -> list[str]:
    """``recipe=NAME`` among ``duo eval`` arguments -> the recipe's ``key=value`` pairs,
    placed before the others so that the user's win. Other arguments pass unchanged."""
    names = [a.split("=", 1)[1] for a in args if a.startswith("recipe=")]
    if not names:
        return list(args)
    recipe = get_recipe(names[-1])
    if recipe.command != command:
        raise ConfigError(f"recipe {recipe.name!r} is for duo {recipe.command}, not duo {command}: "
                          f"run {recipe.command_line()}")
    return [*recipe.args(), *(a for a in args if not a.startswith("recipe="))]
