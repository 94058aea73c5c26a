"""Copy the web listener from api { } into web { }; web UI interfaces get a web.allow rule."""

# What Flywall makes of the legacy api listener at every load (FLYWALL.md §3), made once on
# disk:
# - listen, tls_listen, tls_cert and tls_key are *copied* (the v0.3 API server still reads
#   them from api) into web wherever web's value is empty, as written;
#   disable_http_redirect = true sets web's disable_redirect = true;
# - if web has no allow and no deny block: one allow { interfaces = [...] } naming the
#   interfaces with access_web_ui = true or management { web = true } / { web_ui = true }
#   (which stay: Flywall still reads them);
# - a web block Flywall has to invent serves the UI and the API (serve_ui, serve_api), so
#   the one written here says so, or loading it would turn both off.
# Version-neutral: no schema_version; nothing to copy or allow means nothing is written, so
# running it twice is running it once.

from flywall.core.formats.hcl import Expression

component = "config"

COPIED = ("listen", "tls_listen", "tls_cert", "tls_key")
INVENTED = {"serve_ui": True, "serve_api": True}


def up(ctx, config):
    root = config.body
    api, web = _exact(root, "api"), _exact(root, "web")
    copies = {}
    if api is not None:
        copies = {n: Expression(api.source(n)) for n in COPIED if _set(api, n) and not _set(web, n)}
        if api.get("disable_http_redirect") is True and _get(web, "disable_redirect") is not True:
            copies["disable_redirect"] = True
    ruled = web is not None and (web.blocks("allow") or web.blocks("deny"))
    allowed = [] if ruled else _allowed(root)
    if web is None and (copies or allowed):
        web = root.add_block("web", **copies, **INVENTED)
    elif web is not None:
        for name, value in copies.items():
            web.set(name, value)
    if copies:
        ctx.log(f"copied {', '.join(copies)} from api into web")
    if allowed:
        web.add_block("allow", interfaces=allowed)
        ctx.log(f"web UI allowed on {', '.join(allowed)}")


def down(ctx, config):
    # What up wrote is still derivable from what it left (api's values, the interfaces'
    # flags), so exactly that goes: a copy still equal to api's, the allow rule still equal
    # to the flagged interfaces, and a web block left saying only what Flywall would invent.
    root = config.body
    api, web = _exact(root, "api"), _exact(root, "web")
    if web is None:
        return
    removed = []
    if api is not None:
        removed = [n for n in COPIED if _set(web, n) and web.source(n) == api.source(n)]
        if api.get("disable_http_redirect") is True and web.get("disable_redirect") is True:
            removed.append("disable_redirect")
    for name in removed:
        web.delete(name)
    allows = web.blocks("allow")
    if len(allows) == 1 and not web.blocks("deny") and _is_rule_for(allows[0], _allowed(root)):
        web.remove_block(allows[0])
        removed.append("allow")
    if web.attributes == INVENTED and not web.blocks():
        root.remove_block(web)
    if removed:
        ctx.log(f"removed {', '.join(removed)} from web: Flywall derives them from api again")


def _allowed(root):
    """The interfaces the legacy flags open the web UI on, in file order, each once."""
    names = []
    for interface in root.blocks("interface"):
        management = interface.blocks("management")
        flagged = interface.get("access_web_ui") is True or any(
            m.get("web") is True or m.get("web_ui") is True for m in management
        )
        if flagged and len(interface.labels) == 1:
            names.append(interface.labels[0])
    return list(dict.fromkeys(names))


def _is_rule_for(allow, names):
    return bool(names) and allow.attributes == {"interfaces": names} and not allow.blocks()


def _get(block, name):
    return None if block is None else block.get(name)


def _set(block, name):
    """Flywall's 'not empty': a non-empty string, or an expression it cannot see into."""
    value = _get(block, name)
    return isinstance(value, Expression) or (isinstance(value, str) and value != "")


def _exact(body, block_type, *labels):
    found = [block for block in body.blocks(block_type, *labels) if block.labels == labels]
    return found[0] if found else None
