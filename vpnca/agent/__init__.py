"""`vpnca agent`: the endpoint side of vpnca, on a device or gateway host that has no CA database and no
CA token. It enrolls over EST with a one-time token (trusting the CA it was told to trust, never
sending the token before), keeps its key local (a 0600 file, or non-extractable on its own PKCS#11
token), renews at 2/3 of the certificate's lifetime over EST re-enrollment with the current
certificate, and loads each new credential into its own charon over VICI.

Nothing here imports the CA's store, authority, issuance or token code (tests/unit/test_agent_imports.py
keeps it so): the agent is a client of the protocols.
"""

DEFAULT_DIR = "/var/lib/vpnca-agent"
