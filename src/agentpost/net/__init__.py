"""Clients and transports for the outside world; each ships its fake."""
