"""Everything that arrives: connection and recipient checks, then the receive pipeline."""
