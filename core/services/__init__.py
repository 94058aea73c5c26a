"""Services over a box: backup, validation, drift, audit, notifications."""
