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
    # 1.0 has no eBPF support, so the block goes whatever it says; a changed one is logged.
    for block in config.body.blocks("ebpf"):
        if block.attributes != {"enabled": False} or block.blocks():
            ctx.log(f"removed ebpf {block.attributes} (1.0 has no eBPF)", "warning")
        config.body.remove_block(block)
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
