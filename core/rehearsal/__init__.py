"""Rehearsing a plan on copies: the sandbox, dry runs, trials."""
