"""The study report: save runs (params, metrics, per-item tables) into a study folder; build a report from it
that treats seeds as replicates and tests fixed claims with paired, Holm-adjusted contrasts (docs/statistics.md)."""
