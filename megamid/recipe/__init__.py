"""The resolved plan: recipe YAML + overrides -> typed PhasePlans (rope, data, LR, eval, layout, budget),
every problem collected at once; `megamid train`, `plan`, `eval`, export and averaging consume it."""

from megamid.recipe.plan import PhasePlan, RecipePlan, load_plan, plan_recipe
from megamid.recipe.table import format_table

__all__ = ["PhasePlan", "RecipePlan", "format_table", "load_plan", "plan_recipe"]
