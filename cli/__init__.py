"""The `flywall` command line (click): thin over `flywall.core.commands`."""
