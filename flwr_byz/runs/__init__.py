"""Runs: results store, grids (specs, planner, executor on Ray or through `flwr run`), reports and audits."""
