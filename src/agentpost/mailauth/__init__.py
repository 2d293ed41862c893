"""Sender authentication: DKIM signing and verification, SPF, DMARC (and later ARC)."""
