"""Runs: the results store (`store`), `flwr run` (`launcher`), grids (specs and presets: `grid`; planner and executor
on Ray or through `flwr run`: `executor`), the one report module (`report`) and the audit of a user's app (`audit`)."""
