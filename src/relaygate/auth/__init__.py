"""Client authentication: static and issued client keys (hashed, looked up in memory)."""

from relaygate.auth.clients import ClientInfo, ClientRegistry, generate_key, hash_key

__all__ = ["ClientInfo", "ClientRegistry", "generate_key", "hash_key"]
