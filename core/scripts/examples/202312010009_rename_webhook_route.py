"""Rename the stored alerts webhook route from /api/v1/alerts to /api/v2/alerts."""

component = "api"
schema_version = "2.0"

OLD, NEW = "/api/v1/alerts", "/api/v2/alerts"


def up(ctx, document):
    _rename(ctx, document, OLD, NEW)
    if "schema_version" in document:
        document["schema_version"] = "2.0"


def down(ctx, document):
    _rename(ctx, document, NEW, OLD)
    if "schema_version" in document:
        document["schema_version"] = "1.0"


def _rename(ctx, document, old, new):
    for hook in document.get("webhooks", []):
        if hook.get("route") == old:
            hook["route"] = new
            ctx.log(f"webhook {hook.get('name', '?')}: {old} -> {new}")
    versions = document.get("route_versions", {})
    if old in versions:
        # Rebuild to keep the key's position: an operator's diff shows one changed line.
        document["route_versions"] = {new if k == old else k: v for k, v in versions.items()}
