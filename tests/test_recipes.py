"""Recipes (duo.recipes): each builds a valid config for its command, holds the official
scripts' values, agrees with the table in docs/reproduce.md, and yields to the user."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from duo.cli import main as cli_main
from duo.commands.common import parse_args
from duo.commands.evaluate import EvalArgs, parse_metrics
from duo.config import build_config
from duo.data.catalog import corpus_names
from duo.recipes import RECIPES, expand_args, get_recipe
from duo.samplers import SamplingConfig
from duo.utils.typed_config import ConfigError, parse_value, save_yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"
DISTILL_BASE = {"algo": {"_name": "distill"}}  # what duo distill starts from (the teacher's config)


def _build(name: str):
    recipe = get_recipe(name)
    if recipe.command == "distill":
        return build_config([f"recipe={name}"], base=DISTILL_BASE)
    return build_config([f"recipe={name}"])


def _eval(args: list[str]):
    return parse_args(expand_args("eval", args), "eval", EvalArgs, SamplingConfig(num_samples=16, batch_size=16))


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.command != "eval"])
def test_training_and_distillation_recipes_build_valid_configs(name):
    cfg = _build(name)
    assert cfg.recipe == name
    assert cfg.to_dict()["recipe"] == name
    again = build_config(cfg.to_dict())  # the saved run config loads back to the same config
    assert again == cfg


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.command == "eval"])
def test_evaluation_recipes_are_valid_duo_eval_arguments(name):
    args, sampling = _eval([f"recipe={name}", "checkpoint=x"])
    assert args.checkpoint == "x"
    parse_metrics(args.metrics)
    if args.corpora:
        assert set(args.corpora.split(",")) <= set(corpus_names())
    if sampling.sampler is not None:
        sampling.options(sampling.sampler)
    assert sampling.protocol == ("paper" if "gen-ppl" in args.metrics else "ours")


def test_official_values():
    """Spot checks against the official scripts (MATH.md 11, docs/reproduce.md)."""
    duo_owt, duo_lm1b = build_config(["recipe=duo-owt"]), build_config(["recipe=duo-lm1b"])
    for cfg, gammas in ((duo_owt, (-3.55, -1.85)), (duo_lm1b, (-3.5, -1.75))):
        a = cfg.algo_cfg
        assert (cfg.algo, a.curriculum, a.tau, a.tau_end, a.curriculum_fraction) == ("duo", "full", 1e-3, None, 0.5)
        assert (a.gamma_min, a.gamma_max) == gammas
        t = cfg.trainer
        assert (t.max_steps, t.batch_size, t.lr, t.warmup_steps, t.lr_schedule, t.ema, t.beta1, t.beta2) == \
            (1_000_000, 512, 3e-4, 2500, "constant", 0.9999, 0.9, 0.999)
        assert cfg.model_preset == "small" and cfg.model.hidden_size == 768 and cfg.model.dropout == 0.1
    assert (duo_owt.data.corpus, duo_owt.data.seq_len, duo_owt.data.tokenizer) == ("openwebtext", 1024, "gpt2")
    assert (duo_lm1b.data.corpus, duo_lm1b.data.seq_len, duo_lm1b.model.max_seq_len) == ("lm1b", 128, 128)
    assert duo_lm1b.data.packing == "pad" and build_config(["recipe=duo-lm1b-wrap"]).data.packing == "wrap"
    pp = build_config(["recipe=duopp-owt"]).algo_cfg
    assert (pp.curriculum, pp.curriculum_k, pp.poly_fit_degree, pp.gamma_min) == ("topk", 2, 9, -3.55)
    assert build_config(["recipe=udlm-owt"]).algo_cfg.curriculum == "none"
    mdlm = build_config(["recipe=mdlm-lm1b"])
    assert mdlm.algo == "mdlm" and mdlm.algo_cfg.time_conditioning is False
    assert build_config(["recipe=ar-owt"]).algo == "ar"
    dcd = _build("dcd-owt")
    d = dcd.algo_cfg
    assert (d.rounds, d.steps_per_round, d.T0, d.loss, d.teacher, d.gamma_min, d.gamma_max) == \
        (5, 10_000, 512, "reverse", "student", -4.0, -1.0)
    assert (d.time_draw, d.student_init) == ("paper", "raw")
    assert (dcd.trainer.lr, dcd.trainer.warmup_steps, dcd.trainer.batch_size, dcd.trainer.ema, dcd.trainer.beta2) == \
        (6e-5, 500, 128, 0.9999, 0.999)
    _, psi = _eval(["recipe=psi-owt-max-rescale"])
    assert (psi.sampler, psi.steps, psi.eta, psi.top_p, psi.kappa_rule()) == \
        ("psi", 256, 0.05, 0.9, ("paper-max-rescale", 0.05))
    _, cap = _eval(["recipe=psi-owt-max-capped"])
    assert cap.kappa_rule() == ("paper-max-capped", 0.01)


def _doc_table() -> dict[str, dict]:
    text = DOC.read_text()
    section = text[text.index("## Recipe values"):]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("recipe", "") or set(cells[0]) <= set("-"):
            continue
        name, command, settings, sweep = cells
        pairs = [p.split("=", 1) for p in settings.split()]
        sweeps = {k: tuple(parse_value(v) for v in vs.split(",")) for k, vs in (p.split("=", 1) for p in sweep.split())}
        rows[name] = {"command": command, "settings": [(k, parse_value(v)) for k, v in pairs], "sweep": sweeps}
    return rows


def test_docs_table_lists_every_recipe_with_its_values():
    table = _doc_table()
    assert list(table) == list(RECIPES)
    for name, recipe in RECIPES.items():
        row = table[name]
        assert row["command"] == recipe.command, name
        assert row["settings"] == list(recipe.overrides.items()), name
        for (_, a), b in zip(row["settings"], recipe.overrides.values()):
            assert type(a) is type(b), (name, a, b)
        assert row["sweep"] == dict(recipe.sweep), name
        for key, values in recipe.sweep.items():
            assert recipe.overrides[key] == values[0]


def test_every_recipe_is_named_in_the_papers_sections_of_the_doc():
    text = DOC.read_text()
    prose = text[:text.index("## Recipe values")]
    missing = [n for n in RECIPES if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", prose)]
    assert not missing


def test_user_overrides_win(tmp_path):
    cfg = build_config(["recipe=duo-owt", "trainer.lr=1e-4", "algo.tau=0.01", "data.seq_len=512",
                        "model.max_seq_len=512"])
    assert (cfg.trainer.lr, cfg.algo_cfg.tau, cfg.data.seq_len) == (1e-4, 0.01, 512)
    assert cfg.algo_cfg.gamma_min == -3.55 and cfg.trainer.batch_size == 512  # the rest stays
    other = build_config(["recipe=duo-owt", "algo=mdlm"])  # another method drops the recipe's algo fields
    assert other.algo == "mdlm" and other.trainer.ema == 0.9999
    save_yaml({"trainer": {"max_steps": 100}}, tmp_path / "c.yaml")
    assert build_config(["recipe=duo-owt", f"config={tmp_path / 'c.yaml'}"]).trainer.max_steps == 100
    save_yaml({"recipe": "mdlm-owt", "trainer": {"max_steps": 7}}, tmp_path / "r.yaml")
    from_file = build_config([f"config={tmp_path / 'r.yaml'}"])
    assert (from_file.recipe, from_file.algo, from_file.trainer.max_steps) == ("mdlm-owt", "mdlm", 7)
    args, sampling = _eval(["recipe=psi-owt-max-rescale", "steps=64", "eta=0.1"])
    assert (sampling.steps, sampling.eta, sampling.top_p) == (64, 0.1, 0.9)
    distill = build_config(["recipe=dcd-owt", "algo.T0=256", "trainer.batch_size=64"], base=DISTILL_BASE)
    assert (distill.algo_cfg.T0, distill.trainer.batch_size, distill.algo_cfg.rounds) == (256, 64, 5)


def test_saved_configs_without_a_recipe_still_load_and_a_base_recipe_is_not_carried():
    plain = build_config([])
    assert plain.recipe is None and "recipe" not in plain.to_dict()
    assert build_config(plain.to_dict()) == plain
    student = build_config([], base=build_config(["recipe=duo-owt"]).to_dict())
    assert student.recipe is None and student.algo_cfg.gamma_min == -3.55  # values kept, name not


def test_bad_recipes_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; valid recipes: duo-lm1b") as err:
        build_config(["recipe=nope"])
    assert "\n" not in str(err.value) and all(n in str(err.value) for n in RECIPES)
    with pytest.raises(ConfigError, match="duo distill checkpoint="):
        build_config(["recipe=dcd-owt"])
    with pytest.raises(ConfigError, match="trains from scratch"):
        build_config(["recipe=duo-owt"], base=DISTILL_BASE)
    with pytest.raises(ConfigError, match="evaluation protocol: run duo eval"):
        build_config(["recipe=psi-owt-max-capped"])
    with pytest.raises(ConfigError, match="is for duo train, not duo eval"):
        expand_args("eval", ["recipe=duo-owt"])
    assert expand_args("eval", ["steps=4"]) == ["steps=4"]


def test_duo_recipes_lists_and_shows(capsys):
    assert cli_main(["recipes"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.split() and line.split()[0] in RECIPES]
    assert listed == list(RECIPES)
    assert cli_main(["recipes", "dcd-owt"]) == 0
    out = capsys.readouterr().out
    assert "distill.time_draw       = paper" in out and "scripts/distil_owt.sh" in out
    assert "duo distill checkpoint=<DUO CHECKPOINT> recipe=dcd-owt" in out
    assert cli_main(["recipes", "genppl-owt"]) == 0
    assert "sweep:   steps in 1024, 512" in capsys.readouterr().out
    assert cli_main(["recipes", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
