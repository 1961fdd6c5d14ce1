"""dicom-gateway: durable DICOM receive -> SQLite queue -> routed delivery."""

__version__ = "0.1.0"
