"""vpnca: a private PKI for IKEv2/IPsec VPN endpoints."""

__version__ = "0.1.0"
