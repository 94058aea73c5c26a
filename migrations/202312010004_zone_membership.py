"""Move zone membership into the zone: zone "lan" { match { interface = "eth0" } }."""

# What Flywall makes of the three legacy spellings at every load (FLYWALL.md §3), made once
# on disk, in Flywall's order:
#   interface "X" { zone = "Z" }      zone "Z" (added at the end of the file if missing) gets
#                                      match { interface = "X" }; `zone` leaves the interface
#   zone "Z" { interface = "X" }      match { interface = "X" } in that zone; the attribute goes
#   zone "Z" { interfaces = [...] }   one match per entry (v0.2; v0.3 refuses the attribute)
# A zone that already has a match naming the interface (with anything else in it, such as
# a vlan) gets no second one. Version-neutral: no schema_version, and a config without
# these shapes is left alone, so running it twice is running it once.

component = "config"
deprecations = {
    "interface.zone": "zone.match.interface",
    "zone.interface": "zone.match.interface",
    "zone.interfaces": "zone.match.interface",
}


def up(ctx, config):
    root = config.body
    for interface in root.blocks("interface"):
        zone_name = interface.get("zone")
        if _name(zone_name) and len(interface.labels) == 1:
            zone = _exact(root, "zone", zone_name) or root.add_block("zone", zone_name)
            interface.delete("zone")
            _add_match(ctx, zone, interface.labels[0])
    for zone in (z for z in root.blocks("zone") if len(z.labels) == 1):
        name = zone.get("interface")
        if _name(name):
            zone.delete("interface")
            _add_match(ctx, zone, name)
        names = zone.get("interfaces")
        if zone.has("interfaces") and _names(names):
            zone.delete("interfaces")
            for name in names:
                _add_match(ctx, zone, name)
        elif zone.has("interfaces"):
            listed = zone.source("interfaces")
            ctx.log(f'zone "{zone.labels[0]}": interfaces = {listed} left as is', "warning")


def down(ctx, config):
    # The 1.1 spelling Flywall still reads: membership goes back on the interface block,
    # else on the zone (one interface each). A match the old spellings cannot say (more
    # than an interface in it, or no room left for it) stays: Flywall reads it as it is.
    # `interfaces = [...]` never comes back: Flywall v0.3 refuses it. A zone left with
    # nothing in it at all (not even a comment) is removed: up made it, or it declared
    # nothing the interface's `zone =` does not.
    root = config.body
    for zone in (z for z in root.blocks("zone") if len(z.labels) == 1):
        moved = 0
        for match in zone.blocks("match"):
            name = _member(match)
            interface = _exact(root, "interface", name) if name else None
            if interface is not None and not interface.has("zone"):
                interface.set("zone", zone.labels[0])
            elif name and not zone.has("interface"):
                zone.set("interface", name)
            else:
                continue
            zone.remove_block(match)
            moved += 1
        if moved:
            ctx.log(f'zone "{zone.labels[0]}": {moved} match(es) back to the 1.1 spelling')
        if moved and _empty(config, zone):
            root.remove_block(zone)


def _add_match(ctx, zone, interface):
    label = zone.labels[0]
    if any(match.get("interface") == interface for match in zone.blocks("match")):
        ctx.log(f'zone "{label}" already matches interface "{interface}"')
        return
    zone.add_block("match", interface=interface)
    ctx.log(f'zone "{label}": match {{ interface = "{interface}" }}')


def _name(value):
    return isinstance(value, str) and value != ""


def _names(value):
    return isinstance(value, list) and all(_name(item) for item in value)


def _member(match):
    """The interface of a match that holds only `interface = "..."`, else None."""
    if match.blocks() or list(match.attributes) != ["interface"]:
        return None
    name = match.get("interface")
    return name if _name(name) else None


def _exact(body, block_type, label):
    found = [block for block in body.blocks(block_type, label) if block.labels == (label,)]
    return found[0] if found else None


def _empty(config, block):
    """No attributes, blocks or comments: the `{` line is followed by the `}` line."""
    if block.attributes or block.blocks():
        return False
    head, *rest = config.text().splitlines()[block.line - 1 : block.line + 1]
    return head.rstrip().endswith("{") and [line.strip() for line in rest] == ["}"]
