"""The bundled strongSwan gateway: its certificate, its swanctl.conf, and pushing both over VICI."""
