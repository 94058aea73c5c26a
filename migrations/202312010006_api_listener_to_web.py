"""Move the web listener from api { } to web { }; access_web_ui becomes web.allow."""

component = "config"
schema_version = "1.5"
depends_on = ["202312010005"]
deprecations = {
    "api.listen": "web.listen",
    "api.tls_listen": "web.tls_listen",
    "api.tls_cert": "web.tls_cert",
    "api.tls_key": "web.tls_key",
    "api.disable_http_redirect": "web.disable_redirect",
    "interface.access_web_ui": "web.allow.interfaces",
}

PREVIOUS = "1.4"
MOVED = {  # api's name -> web's name
    "listen": "listen",
    "tls_listen": "tls_listen",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "disable_http_redirect": "disable_redirect",
}


def up(ctx, config):
    if not _older(config.schema_version, schema_version):
        return  # a config at this version or newer has this shape already
    root = config.body
    api = _exact(root, "api")
    moving = {} if api is None else {k: v for k, v in api.attributes.items() if k in MOVED}
    interfaces = [i for i in root.blocks("interface") if i.has("access_web_ui")]
    allowed = [i.labels[0] for i in interfaces if i.get("access_web_ui") is True and i.labels]
    web = _exact(root, "web")
    if web is None and (moving or allowed):
        web = root.add_block("web", **{MOVED[k]: v for k, v in moving.items()})
    elif web is not None:  # a web block exists already: it wins, and gains what it lacks
        for name, value in moving.items():
            if not web.has(MOVED[name]):
                web.set(MOVED[name], value)
    for name in moving:  # an api block that only held the listener stays, empty: down refills it
        api.delete(name)
    if moving:
        ctx.log(f"moved {', '.join(moving)} from api to web")
    if allowed:
        _allow(ctx, web, allowed)
        ctx.log(f"web UI allowed on {', '.join(allowed)}")
    for interface in interfaces:  # `false` was the default: there is nothing to carry over
        interface.delete("access_web_ui")
    config.schema_version = schema_version


def down(ctx, config):
    # Attributes come back after the ones still in api { } and on each interface: 1.5 does
    # not record where they were. A web block left empty is removed (up made it).
    root = config.body
    web = _exact(root, "web")
    if web is not None:
        back = {k: v for k, v in web.attributes.items() if k in MOVED.values()}
        api = (_exact(root, "api") or root.add_block("api")) if back else None
        for web_name, value in back.items():  # in web's order, which up took from api
            api.set(next(k for k, v in MOVED.items() if v == web_name), value)
            web.delete(web_name)
        allow = _exact(web, "allow")
        names = None if allow is None else allow.get("interfaces")
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            for name in names:
                interface = _exact(root, "interface", name) or root.add_block("interface", name)
                interface.set("access_web_ui", value=True)
            allow.delete("interfaces")
            if not allow.attributes and not allow.blocks():
                web.remove_block(allow)
        if not web.attributes and not web.blocks():
            root.remove_block(web)
    if config.schema_version == schema_version:
        config.schema_version = PREVIOUS


def _allow(ctx, web, names):
    allow = _exact(web, "allow")
    if allow is None:
        web.add_block("allow", interfaces=names)
        return
    listed = allow.get("interfaces", [])
    if isinstance(listed, list):
        allow.set("interfaces", listed + [name for name in names if name not in listed])
    else:
        ctx.log(f"web.allow.interfaces is an expression: add {names} by hand", "warning")


def _exact(body, block_type, *labels):
    found = [block for block in body.blocks(block_type, *labels) if block.labels == labels]
    return found[0] if found else None


def _older(current, version):
    """Whether `current` (None when absent) is below `version`, comparing numbers."""

    def key(text):
        return [int(part) if part.isdigit() else -1 for part in text.split(".")]

    return current is None or key(current) < key(version)
