"""Add a services section to every zone, with DNS and DHCP off."""

component = "config"
schema_version = "1.2"
depends_on = ["202311300001"]

PREVIOUS = "1.1"
DEFAULT = {"dns": False, "dhcp": False}


def up(ctx, config):
    if not _older(config.schema_version, schema_version):
        return  # a config at this version or newer has this shape already
    for zone in config.body.blocks("zone"):
        if not zone.blocks("services"):
            zone.add_block("services", **DEFAULT)
            ctx.log(f"zone {' '.join(zone.labels)}: added services (dns and dhcp off)")
    config.schema_version = schema_version


def down(ctx, config):
    # Only a services block that still holds exactly the defaults is removed: right after
    # up that is each block up added, so the file returns to its bytes. A block an operator
    # has changed since is kept and logged: removing it would lose settings, and keeping it
    # means migrating again finds it and leaves it alone (up skips zones with services).
    for zone in config.body.blocks("zone"):
        for services in zone.blocks("services"):
            if _is_default(services):
                zone.remove_block(services)
            else:
                ctx.log(f"zone {' '.join(zone.labels)}: kept changed services", "warning")
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _is_default(services):
    attributes = services.attributes
    values_are_false = all(value is False for value in attributes.values())
    return attributes.keys() == DEFAULT.keys() and values_are_false and not services.blocks()


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
