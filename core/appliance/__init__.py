"""The box: settings, layout, workspace, the daemon, UI backups, systemd, the demo tree."""
