"""Use cases shared by every adapter; authorisation is checked here, once."""
