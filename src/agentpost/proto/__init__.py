"""Pure RFC code: bytes in, values out."""
