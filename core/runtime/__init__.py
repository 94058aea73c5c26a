"""Running migrations: the engine, the one recorder, recovery, the lock, the watchdog."""
