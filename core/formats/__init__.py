"""Config-file libraries: HCL documents that keep comments, plain HCL settings."""
