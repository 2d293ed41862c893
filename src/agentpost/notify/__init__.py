"""The committed event log fanned out: webhook deliveries and live wake-ups."""
