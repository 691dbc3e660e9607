"""``duo recipes`` lists the papers' settings; ``duo recipes NAME`` shows one of them."""

from __future__ import annotations

from ..recipes import RECIPES, format_value, get_recipe
from ..utils.typed_config import ConfigError


def listing() -> str:
    width = max(len(name) for name in RECIPES)
    where = {name: f"{r.paper}: {r.table}" for name, r in RECIPES.items()}
    w2 = max(len(text) for text in where.values())
    lines = [f"{'recipe':{width}}  {'command':7}  {'paper / table':{w2}}  description"]
    for r in RECIPES.values():
        lines.append(f"{r.name:{width}}  {r.command:7}  {where[r.name]:{w2}}  {r.description}")
    lines.append("duo recipes NAME shows a recipe's settings; user overrides after recipe=NAME win.")
    return "\n".join(lines) + "\n"


def details(name: str) -> str:
    r = get_recipe(name)
    lines = [f"{r.name}: {r.description}", f"  paper:   {r.paper}, {r.table}", f"  command: {r.command}",
             f"  source:  {r.source} (github.com/s-sahoo/duo)"]
    if r.notes:
        lines.append(f"  notes:   {r.notes}")
    lines.append("  settings:")
    width = max(len(k) for k in r.overrides)
    lines += [f"    {key:{width}} = {format_value(value)}" for key, value in r.overrides.items()]
    for key, values in r.sweep.items():
        lines.append(f"  sweep:   {key} in {', '.join(format_value(v) for v in values)}")
    lines.append(f"  run:     {r.command_line()}")
    return "\n".join(lines) + "\n"


def main(args: list[str]) -> int:
    if len(args) > 1:
        raise ConfigError("duo recipes takes at most one recipe name, e.g. duo recipes duo-owt")
    print(details(args[0]) if args else listing(), end="")
    return 0
