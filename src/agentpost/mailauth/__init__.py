"""Sender authentication: DKIM signing and (later) SPF, DKIM, DMARC and ARC verification."""
