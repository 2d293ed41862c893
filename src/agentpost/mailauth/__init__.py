"""Sender authentication: DKIM signing, SPF checks, and (later) DKIM, DMARC and ARC verification."""
