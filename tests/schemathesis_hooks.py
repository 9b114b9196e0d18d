"""Loaded by schemathesis before a run (SCHEMATHESIS_HOOKS)."""
