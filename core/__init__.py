"""Flywall-migration core: events, lifecycle, projection, engine, targets, commands."""
