"""pyalived: a keepalived-compatible VRRPv2 and LVS health-checking daemon."""

__version__ = "0.1.0"
