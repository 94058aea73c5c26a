"""Label the global protection block: protection "legacy_global" { interface = "*" }."""

# Flywall rewrites an unlabelled top-level `protection { }` or `global_protection { }` into
# this form at every load, in memory (FLYWALL.md §3); this makes it once, on disk. Several
# such blocks need distinct labels, or the strict loader refuses the duplicates, so the
# second is "legacy_global_2", and so on. Version-neutral: no schema_version, and a config
# without the shape is left alone.

component = "config"
deprecations = {"global_protection": "protection"}

LABEL = "legacy_global"
LEGACY = ("protection", "global_protection")


def up(ctx, config):
    root = config.body
    taken = {block.labels[0] for block in root.blocks("protection") if block.labels}
    for block in root.blocks():
        if block.type not in LEGACY or block.labels:
            continue
        label = _free(taken)
        taken.add(label)
        old = block.type
        root.rename_block(block, "protection", label)
        if block.has("interface"):  # Flywall's text rewrite would add a second one
            kept = block.source("interface")
            ctx.log(f'{old} {{ }} is now protection "{label}"; kept interface = {kept}', "warning")
            continue
        block.set("interface", "*", first=True)
        ctx.log(f'{old} {{ }} is now protection "{label}" {{ interface = "*" }}')


def down(ctx, config):
    # 1.1 reads both spellings the same way, so the unlabelled `protection` comes back for
    # either; `interface = "*"` goes only where it is exactly what up wrote.
    root = config.body
    for block in root.blocks("protection"):
        labels = block.labels
        if len(labels) == 1 and _ours(labels[0]) and block.get("interface") == "*":
            block.delete("interface")
            root.relabel(block)
            ctx.log(f'protection "{labels[0]}" is an unlabelled protection {{ }} again')


def _free(taken):
    """The first of legacy_global, legacy_global_2, ... that no protection block uses."""
    label, n = LABEL, 1
    while label in taken:
        n += 1
        label = f"{LABEL}_{n}"
    return label


def _ours(label):
    """Whether `label` is one `_free` hands out."""
    suffix = label.removeprefix(LABEL)
    return suffix == "" or (suffix.startswith("_") and suffix[1:].isdigit())
