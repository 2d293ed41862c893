"""Persistence: the only package that speaks SQL or touches blob storage."""
