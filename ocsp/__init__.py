"""The revocation status service: OCSP responder and CRL distribution."""
