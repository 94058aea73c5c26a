"""Power-cut simulation for SQLite files: a VFS that models the platter, and the checker."""
