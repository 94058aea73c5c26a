"""Move zone membership into the zone: zone "lan" { match { interface = "eth0" } }."""

component = "config"
schema_version = "1.3"
depends_on = ["202312010001"]
deprecations = {
    "interface.zone": "zone.match.interface",
    "zone.interface": "zone.match.interface",
}

PREVIOUS = "1.2"


def up(ctx, config):
    if not _older(config.schema_version, schema_version):
        return  # a config at this version or newer has this shape already
    root = config.body
    for zone in root.blocks("zone"):  # the 1.2 form zone "dmz" { interface = "eth2" }
        name = zone.get("interface")
        if isinstance(name, str) and len(zone.labels) == 1:
            zone.delete("interface")
            _add_match(ctx, zone, name)
    for interface in root.blocks("interface"):  # the 1.2 form interface "eth0" { zone = "lan" }
        zone_name = interface.get("zone")
        if isinstance(zone_name, str) and len(interface.labels) == 1:
            interface.delete("zone")
            _add_match(ctx, root.setdefault_block("zone", zone_name), interface.labels[0])
    config.schema_version = schema_version


def down(ctx, config):
    # 1.2 could say "eth2 is in dmz" on the interface or on the zone, and 1.3 keeps no trace
    # of which: membership goes back on the interface, where most configs had it, else on
    # the zone (one interface each), else into a new interface block. Only a match holding
    # just `interface` has a 1.2 form; any other match is kept. A zone left with nothing in
    # it at all (not even a comment) is removed: it was made by up, or declared nothing that
    # the interface's `zone =` does not.
    root = config.body
    for zone in (z for z in root.blocks("zone") if len(z.labels) == 1):
        members = [(match, _member(match)) for match in zone.blocks("match")]
        members = [(match, name) for match, name in members if name is not None]
        for match, name in members:
            zone.remove_block(match)
            interface = _exact(root, "interface", name)
            if interface is not None:
                interface.set("zone", zone.labels[0])
            elif not zone.has("interface"):
                zone.set("interface", name)
            else:
                root.add_block("interface", name, zone=zone.labels[0])
        if members and _empty(config, zone):
            root.remove_block(zone)
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _add_match(ctx, zone, interface):
    if any(_member(match) == interface for match in zone.blocks("match")):
        return
    zone.add_block("match", interface=interface)
    ctx.log(f'zone "{zone.labels[0]}": match {{ interface = "{interface}" }}')


def _member(match):
    """The interface of a match that holds only `interface = "..."`, else None."""
    if match.blocks() or list(match.attributes) != ["interface"]:
        return None
    name = match.get("interface")
    return name if isinstance(name, str) else None


def _exact(body, block_type, label):
    found = [block for block in body.blocks(block_type, label) if block.labels == (label,)]
    return found[0] if found else None


def _empty(config, block):
    """No attributes, blocks or comments: the `{` line is followed by the `}` line."""
    if block.attributes or block.blocks():
        return False
    head, *rest = config.text().splitlines()[block.line - 1 : block.line + 1]
    return head.rstrip().endswith("{") and [line.strip() for line in rest] == ["}"]


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
