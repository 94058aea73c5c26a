"""Rename vpn_link_group and vpn_link blocks to uplink_group and uplink, at any depth."""

# Flywall renames them in the text at every load (FLYWALL.md §3); this does it once, on
# disk, on block types only: a comment or a string that mentions the old names is the
# operator's text. Version-neutral: no schema_version, and a config without the old names
# is left alone, so running it twice is running it once.

component = "config"
deprecations = {
    "vpn_link_group": "uplink_group",
    "vpn_link_group.vpn_link": "uplink_group.uplink",
    "vpn_link": "uplink",
}

RENAMED = {"vpn_link_group": "uplink_group", "vpn_link": "uplink"}


def up(ctx, config):
    renamed = _rename(config.body, RENAMED)
    if renamed:
        ctx.log(f"renamed {renamed} block(s) to uplink_group / uplink")


def down(ctx, config):
    renamed = _rename(config.body, {new: old for old, new in RENAMED.items()})
    if renamed:
        ctx.log(f"renamed {renamed} block(s) back to vpn_link_group / vpn_link")


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
