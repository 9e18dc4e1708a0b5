"""Privacy: sealing personal data at rest with Fernet (the core's Sealing port)."""
