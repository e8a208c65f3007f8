"""The phase plan: per phase seq_len, rope, data mix, LR segment, parallel layout and budget, checked
before any training (`megamid plan`)."""

from megamid.recipe.plan import PhasePlan, RecipePlan, format_table, model_differences, plan_recipe

__all__ = ["PhasePlan", "RecipePlan", "format_table", "model_differences", "plan_recipe"]
