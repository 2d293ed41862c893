"""SMTP listeners; aiosmtpd is imported only here."""
