"""Replace the legacy dns_server block by dns { }, serving settings in serve "*"."""

component = "config"
schema_version = "1.4"
depends_on = ["202312010004"]
deprecations = {"dns_server": "dns"}

PREVIOUS = "1.3"
SERVING = ("listen_on", "local_domain")  # the rest (forwarders, ...) configures upstream


def up(ctx, config):
    if not _older(config.schema_version, schema_version):
        return  # a config at this version or newer has this shape already
    root = config.body
    for legacy in root.blocks("dns_server"):
        enabled = legacy.get("enabled", True) is not False
        serving = {k: v for k, v in legacy.attributes.items() if k in SERVING}
        dns = _exact(root, "dns")
        if dns is None:  # rename in place: position, comments and upstream lines stay
            root.rename_block(legacy, "dns")
            dns = legacy
            for name in ("enabled", *serving):
                dns.delete(name)
        else:  # a dns block exists already: it wins, and gains what it lacks
            for name, value in legacy.attributes.items():
                if name not in ("enabled", *SERVING) and not dns.has(name):
                    dns.set(name, value)
            root.remove_block(legacy)
        if not enabled:
            if serving:
                ctx.log(f"dns_server was disabled: dropped {', '.join(serving)}", "warning")
        elif _exact(dns, "serve", "*") is None:
            dns.add_block("serve", "*", **serving)
        ctx.log("dns_server is now dns" + (' serving "*"' if enabled else ", not serving"))
    config.schema_version = schema_version


def down(ctx, config):
    # The attributes come back after the upstream ones: 1.4 does not record where they were.
    root = config.body
    dns = _exact(root, "dns")
    if dns is not None and not root.blocks("dns_server"):
        serve = _exact(dns, "serve", "*")
        settings = {} if serve is None else serve.attributes
        if serve is not None and serve.blocks():
            ctx.log('dns.serve "*" has nested blocks 1.3 cannot express: dropped', "warning")
        root.rename_block(dns, "dns_server")
        if serve is not None:
            dns.remove_block(serve)
        dns.set("enabled", serve is not None)
        for name, value in settings.items():
            dns.set(name, value)
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _exact(body, block_type, *labels):
    found = [block for block in body.blocks(block_type, *labels) if block.labels == labels]
    return found[0] if found else None


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
