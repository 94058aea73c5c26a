"""The seed's sample migrations: package data the demo writes into a box's migrations folder.

They show what the engine can do, but they are not Flywall's: `add_zone_services` stamps
the config "1.2", which Flywall v0.3 refuses. So they live here, never in
`flywall.migrations` (the shipped set discovery reads), and `demo` copies them out
(`flywall.core.appliance.demo`). Files are read as data, never imported.
"""
