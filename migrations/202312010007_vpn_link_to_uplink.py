"""Rename vpn_link_group and vpn_link blocks to uplink_group and uplink, at any depth."""

component = "config"
schema_version = "1.6"
depends_on = ["202312010006"]
deprecations = {
    "vpn_link_group": "uplink_group",
    "vpn_link_group.vpn_link": "uplink_group.uplink",
    "vpn_link": "uplink",
}

PREVIOUS = "1.5"
RENAMED = {"vpn_link_group": "uplink_group", "vpn_link": "uplink"}


def up(ctx, config):
    if not _older(config.schema_version, schema_version):
        return  # a config at this version or newer has this shape already
    renamed = _rename(config.body, RENAMED)
    if renamed:
        ctx.log(f"renamed {renamed} block(s) to uplink_group / uplink")
    config.schema_version = schema_version


def down(ctx, config):
    _rename(config.body, {new: old for old, new in RENAMED.items()})
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _rename(body, names):
    """Rename block types through the parsed document, never text in comments or strings.

    Returns how many blocks were renamed.
    """
    renamed = 0
    for block in body.blocks():
        if block.type in names:
            body.rename_block(block, names[block.type])
            renamed += 1
        renamed += _rename(block.body, names)
    return renamed


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
