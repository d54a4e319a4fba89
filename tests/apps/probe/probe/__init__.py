"""Probe app for the adversary hook tests."""
