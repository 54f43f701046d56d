"""Every Redis key and channel name the service uses, built from one prefix.

Keys that must live together in Redis Cluster share the `{prefix}` hash tag of the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "panel:"

    @property
    def audit_stream(self) -> str:
        return f"{self.prefix}audit"

    @property
    def audit_dead_letter(self) -> str:
        return f"{self.prefix}audit:dead"

    def audit_idempotency(self, event_id: str) -> str:
        return f"{self.prefix}audit:seen:{event_id}"

    def audit_counter(self, window: str, dimension: str) -> str:
        return f"{self.prefix}audit:count:{window}:{dimension}"

    def customer(self, lookup_key: str) -> str:
        return f"{self.prefix}cache:customer:{lookup_key}"

    def customer_aliases(self, partner_id: str) -> str:
        return f"{self.prefix}cache:aliases:{partner_id}"

    def customer_lock(self, lookup_key: str) -> str:
        return f"{self.prefix}cache:lock:{lookup_key}"

    def wecom_secret(self, temp_id_digest: str) -> str:
        return f"{self.prefix}wecom:secret:{temp_id_digest}"

    @property
    def invalidations_channel(self) -> str:
        """Every replica listens here to drop its in-process cache tier."""
        return f"{self.prefix}invalidations"

    def partner_channel(self, partner_id: str) -> str:
        """Per-customer channel: a replica subscribes while it has sockets showing that customer."""
        return f"{self.prefix}partner:{partner_id}"
