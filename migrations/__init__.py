"""The migrations Flywall itself ships; discovered as files, never imported as modules."""
