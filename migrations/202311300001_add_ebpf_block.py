"""Add the eBPF section, disabled: from 1.1 every config declares it."""

component = "config"
schema_version = "1.1"

PREVIOUS = "1.0"


def up(ctx, config):
    if not _older(config.schema_version, schema_version):
        return  # a config at this version or newer has this shape already
    if not config.body.blocks("ebpf"):
        config.body.add_block("ebpf", enabled=False)
        ctx.log("added ebpf { enabled = false }")
    config.schema_version = schema_version


def down(ctx, config):
    # Only what up writes goes back: an ebpf block holding exactly `enabled = false`, and
    # with it the version. An ebpf block that says more is the operator's (or the config
    # was written for 1.1 to begin with): it stays, and so does "1.1", the version that
    # knows it. Removing it would lose their settings.
    blocks = config.body.blocks("ebpf")
    kept = [block for block in blocks if block.attributes != {"enabled": False} or block.blocks()]
    if kept:
        ctx.log(f"kept ebpf at line {kept[0].line}: it holds settings; config stays 1.1", "warning")
        return
    for block in blocks:
        config.body.remove_block(block)
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
