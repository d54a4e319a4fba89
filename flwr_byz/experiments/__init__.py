"""Experiments: results files, `flwr run` launching, tables and plots."""
