"""ACME (RFC 8555): a thin adapter over the issuance core, served on the HTTPS listener."""
