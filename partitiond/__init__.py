"""partitiond: keeps xmtpd's gateway-envelope partitions ahead of demand."""

__version__ = "0.1.0"
