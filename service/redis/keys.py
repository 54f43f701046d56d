"""Every Redis key and channel name the service uses, built from one prefix.

On a single Redis (plain, TLS, unix socket or Sentinel) every name is `prefix + suffix`, so the audit
stream is `panel:audit` as CONTRACT.md says.

On Redis Cluster (`Keys(prefix, cluster=True)`) two families of keys are built differently:

- tenant keys, which multi-key commands touch together (the audit stream, its dead-letter stream, its
  idempotency keys and its rolling counters), share the tenant's hash tag so they live in one slot:
  with the default prefix the stream is `{panel}:audit`, the idempotency keys `{panel}:audit:seen:<id>`,
  the counters `{panel}:audit:count:<window>:<dimension>`. A prefix that already carries a hash tag
  (`{acme}:panel:`) is used as it is.
- cache keys (customers, their aliases and fill locks, the WeCom secret) carry no hash tag, so they
  spread over every node: `panel:cache:customer:<alias>` (a tag in the prefix is dropped for them:
  `{acme}:` gives `acme:cache:customer:<alias>`).

Pub/sub channel names never take part in slot routing of the commands the service uses (classic
PUBLISH reaches every node), so they are `prefix + suffix` in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The first segment of every name built below: a tenant (`prefix + NAME + ":"`) may not be named like one,
# or its keys and channels would fall inside the default company's.
NAMESPACES = frozenset({"audit", "cache", "wecom", "invalidations", "partner", "ops"})


def hash_tag(name: str) -> str | None:
    """The part of `name` Redis Cluster hashes, when `name` has a hash tag: the text between the first
    `{` and the first `}` after it, if not empty (the rule of the Cluster specification)."""
    start = name.find("{")
    if start < 0:
        return None
    end = name.find("}", start + 1)
    if end <= start + 1:
        return None
    return name[start + 1 : end]


def _tagged(prefix: str) -> str:
    """`panel:` -> `{panel}:`; a prefix with a hash tag already is kept; an empty stem becomes `{panel}`."""
    if hash_tag(prefix) is not None:
        return prefix
    stem = prefix.rstrip(":")
    return "{" + (stem or "panel") + "}" + prefix[len(stem) :]


def _untagged(prefix: str) -> str:
    """The prefix without its hash tag's braces, so keys built from it spread over the slots."""
    tag = hash_tag(prefix)
    if tag is None:
        return prefix
    start = prefix.find("{")
    return prefix[:start] + tag + prefix[start + len(tag) + 2 :]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "panel:"
    cluster: bool = False
    tenant_prefix: str = field(init=False, repr=False, compare=False)
    spread_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant_prefix", _tagged(self.prefix) if self.cluster else self.prefix)
        object.__setattr__(self, "spread_prefix", _untagged(self.prefix) if self.cluster else self.prefix)

    @classmethod
    def for_cluster(cls, prefix: str = "panel:") -> Keys:
        return cls(prefix, cluster=True)

    def for_tenant(self, name: str) -> Keys:
        """The names of one tenant of a multi-company deployment: everything under `prefix + name + ":"`,
        so Redis ACLs (`~panel:acme:*`, `&panel:acme:*`) can keep tenants apart."""
        if name in NAMESPACES:
            raise ValueError(f"tenant name {name!r} is taken by the service's own key names")
        return Keys(f"{self.prefix}{name}:", cluster=self.cluster)

    # --- tenant keys: one hash slot in Redis Cluster ---------------------------------------------

    @property
    def audit_stream(self) -> str:
        return f"{self.tenant_prefix}audit"

    @property
    def audit_dead_letter(self) -> str:
        return f"{self.tenant_prefix}audit:dead"

    def audit_idempotency(self, event_id: str) -> str:
        return f"{self.tenant_prefix}audit:seen:{event_id}"

    @property
    def audit_trim_lock(self) -> str:
        """Held for a moment by the replica running a retention pass, so one trims at a time."""
        return f"{self.tenant_prefix}audit:trim-lock"

    def audit_counter(self, window: str, dimension: str) -> str:
        return f"{self.tenant_prefix}audit:count:{window}:{dimension}"

    # --- cache keys: spread over the slots -------------------------------------------------------

    def customer(self, lookup_key: str) -> str:
        return f"{self.spread_prefix}cache:customer:{lookup_key}"

    def customer_aliases(self, partner_id: str) -> str:
        return f"{self.spread_prefix}cache:aliases:{partner_id}"

    def customer_lock(self, lookup_key: str) -> str:
        return f"{self.spread_prefix}cache:lock:{lookup_key}"

    def wecom_secret(self, temp_id_digest: str) -> str:
        return f"{self.spread_prefix}wecom:secret:{temp_id_digest}"

    # --- pub/sub channels ------------------------------------------------------------------------

    @property
    def invalidations_channel(self) -> str:
        """Every replica listens here to drop its in-process cache tier."""
        return f"{self.prefix}invalidations"

    def partner_channel(self, partner_id: str) -> str:
        """Per-customer channel: a replica subscribes while it has sockets showing that customer."""
        return f"{self.prefix}partner:{partner_id}"
