"""Replace the legacy dns_server block by dns { }, serving settings in serve "*"."""

# What Flywall makes of `dns_server { }` at every load (FLYWALL.md §3), made once on disk:
# - skipped entirely when `dns` already has a serve block or forwarders (Flywall then
#   ignores dns_server: it stays, and the log says so);
# - the upstream settings (UPSTREAM) go onto `dns`, replacing what dns said about them;
# - only if `enabled = true` (absent is false) a `serve "*"` gets the serving settings
#   (SERVING), else they are dropped, with a warning;
# - `listen_on` has no place in dns (serve listens on every address): dropped, with a
#   warning.
# Lines move as written, comments with them. Version-neutral: no schema_version, and a
# config without dns_server is left alone, so running it twice is running it once.

component = "config"
deprecations = {"dns_server": "dns"}

UPSTREAM = (
    "mode",
    "forwarders",
    "conditional_forward",
    "upstream_timeout",
    "upstream_doh",
    "upstream_dot",
    "upstream_dnscrypt",
    "recursive",
    "dnssec",
)
SERVING = (
    "listen_port",
    "local_domain",
    "expand_hosts",
    "dhcp_integration",
    "authoritative_for",
    "rebind_protection",
    "query_logging",
    "rate_limit_per_sec",
    "blocklist",
    "allowlist",
    "blocked_ttl",
    "blocked_address",
    "cache_enabled",
    "cache_size",
    "cache_min_ttl",
    "cache_max_ttl",
    "negative_cache_ttl",
    "doh_server",
    "dot_server",
    "dnscrypt_server",
    "host",
    "zone",
)


def up(ctx, config):
    root = config.body
    for legacy in root.blocks("dns_server"):
        dns = _exact(root, "dns")
        if dns is not None and _serves_or_forwards(dns):
            ctx.log(
                f"dns_server at line {legacy.line} left as is: dns already has a serve block "
                "or forwarders, so Flywall ignores dns_server",
                "warning",
            )
            continue
        _migrate(ctx, root, legacy, dns)


def down(ctx, config):
    # dns_server comes back with dns's upstream settings and what its serve "*" holds. What
    # dns_server cannot say (inspect, egress_filter) stays in dns, which is then not renamed
    # but split; a dns with other serve blocks stays whole (Flywall would then ignore a
    # dns_server). The serving lines come back after the upstream ones (dns does not record
    # where they were); listen_on, which up dropped, cannot come back.
    root = config.body
    dns = _exact(root, "dns")
    if dns is None or root.blocks("dns_server"):
        return
    serves = dns.blocks("serve")
    serve = serves[0] if serves else None
    blocking = _unsayable(serves)
    if blocking:
        ctx.log(f"dns kept: dns_server cannot say {', '.join(blocking)}", "warning")
        return
    rest = [n for n in map(_item_name, dns.items()) if n not in (*UPSTREAM, "serve")]
    upstream = [n for n in map(_item_name, dns.items()) if n in UPSTREAM]
    if rest and not upstream and serve is None:
        return  # nothing dns_server ever said
    if rest:  # dns keeps what dns_server cannot say
        legacy = root.add_block("dns_server")
        for item in dns.items():
            if _item_name(item) in UPSTREAM:
                dns.move(item, legacy)
    else:  # rename in place: its position, comments and upstream lines stay
        root.rename_block(dns, "dns_server")
        legacy = dns
    if serve is not None:
        for item in serve.items():
            serve.move(item, legacy)
        dns.remove_block(serve)
    legacy.set("enabled", serve is not None, first=True)
    kept = f"; dns keeps {', '.join(rest)}" if rest else ""
    ctx.log("dns_server is back" + (", enabled" if serve is not None else "") + kept)


def _migrate(ctx, root, legacy, dns):
    enabled = legacy.get("enabled") is True
    _drop_listen_on(ctx, legacy)
    legacy.delete("enabled")
    dns = _upstream(ctx, root, legacy, dns)
    serving = [item for item in legacy.items() if _item_name(item) in SERVING]
    if enabled:
        serve = dns.add_block("serve", "*")
        for item in serving:
            legacy.move(item, serve)
    elif serving:
        names = ", ".join(dict.fromkeys(_item_name(item) for item in serving))
        ctx.log(f"dns_server was not enabled: dropped {names}", "warning")
        for item in serving:
            _remove(legacy, item)
    if legacy is not dns:
        root.remove_block(legacy)
    ctx.log("dns_server is now dns" + (' serving "*"' if enabled else ", not serving"))


def _drop_listen_on(ctx, legacy):
    """Warn about what has no place in dns: listen_on, and what Flywall does not know."""
    known = (*UPSTREAM, *SERVING, "enabled", "listen_on")
    unknown = [_item_name(item) for item in legacy.items() if _item_name(item) not in known]
    if unknown:  # the strict loader refuses them already: they stay, or go with dns_server
        ctx.log(f"dns_server holds {', '.join(unknown)}, which Flywall does not know", "warning")
    if legacy.has("listen_on"):
        dropped = legacy.source("listen_on")
        ctx.log(f"dropped listen_on = {dropped}: serve listens on every address", "warning")
        legacy.delete("listen_on")


def _upstream(ctx, root, legacy, dns):
    """Put the upstream settings on dns; return dns, which may be dns_server renamed."""
    if dns is None:  # rename in place: its position, comments and upstream lines stay
        root.rename_block(legacy, "dns")
        return legacy
    for item in dns.items():  # Flywall overwrites them with dns_server's, set or not
        if _item_name(item) in UPSTREAM:
            name = _item_name(item)
            ctx.log(f"dns {name} dropped: Flywall takes it from dns_server", "warning")
            _remove(dns, item)
    for item in legacy.items():
        if _item_name(item) in UPSTREAM:
            legacy.move(item, dns)
    return dns


def _unsayable(serves):
    """What in dns's serve blocks dns_server has no words for."""
    found = [" ".join(["serve", *(f'"{x}"' for x in s.labels)]) for s in serves[1:]]
    if serves and serves[0].labels != ("*",):
        found.insert(0, " ".join(["serve", *(f'"{x}"' for x in serves[0].labels)]))
    elif serves:
        found += [n for n in map(_item_name, serves[0].items()) if n not in SERVING]
    return found


def _serves_or_forwards(dns):
    """Flywall's skip rule; forwarders written as an expression count as set, null as none."""
    forwarders = dns.get("forwarders") or []
    return bool(dns.blocks("serve")) or not isinstance(forwarders, list) or bool(forwarders)


def _item_name(item):
    return item if isinstance(item, str) else item.type


def _remove(body, item):
    if isinstance(item, str):
        body.delete(item)
    else:
        body.remove_block(item)


def _exact(body, block_type, *labels):
    found = [block for block in body.blocks(block_type, *labels) if block.labels == labels]
    return found[0] if found else None
