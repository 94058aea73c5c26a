"""Migration targets: one module per kind of thing a migration changes."""
