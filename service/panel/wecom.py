"""The WeCom sidebar secret, fetched from Sobot's gateway (SPEC §3.4) and cached in Redis.

`GET {gateway}/gateway/qywx-service/iframeConfigSecret/querySecret` with header `temp-id`. The secret
is used only when `openFlag` is 1; `retCode` "000000" means success. Redis holds the answer for
`ttl_s` so replicas do not each ask the gateway; when Redis is away the gateway is asked directly.
"""

from __future__ import annotations

import hashlib
import json
import logging

import aiohttp
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from ..errors import Code, PanelError
from ..redis import RedisClient
from ..redis.keys import Keys

log = logging.getLogger(__name__)

QUERY_SECRET_PATH = "/gateway/qywx-service/iframeConfigSecret/querySecret"
SUCCESS = "000000"


class WecomSecretError(PanelError):
    status = 502


class SecretItem(BaseModel):
    id: str = ""
    corpId: str = ""
    companyId: str = ""
    secret: str = ""
    openFlag: int = 0
    iframeFlag: int = 0
    msgSearchDockingFlag: int = 0
    createTime: int = 0  # SPEC §3.4: seconds here, unlike the ms timestamps of the iFrame query
    updateTime: int = 0


class SecretResponse(BaseModel):
    item: SecretItem | None = None
    retCode: str
    retMsg: str = ""


class WecomSecretClient:
    def __init__(
        self, redis: RedisClient, keys: Keys, *, gateway: str, temp_id: str, ttl_s: int = 300, timeout_s: float = 5
    ) -> None:
        self._redis = redis
        self._gateway = gateway.rstrip("/")
        self._temp_id = temp_id
        self.ttl_s = ttl_s
        self._cache_key = keys.wecom_secret(hashlib.sha256(temp_id.encode()).hexdigest()[:16])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        await self._session.close()

    async def fetch(self) -> SecretItem:
        """Ask the gateway. Raises WecomSecretError with a code naming what failed (never the secret)."""
        try:
            async with self._session.get(
                self._gateway + QUERY_SECRET_PATH, headers={"temp-id": self._temp_id}
            ) as response:
                if response.status != 200:
                    raise WecomSecretError(Code.WECOM_GATEWAY_STATUS, status=response.status)
                body = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise WecomSecretError(Code.WECOM_GATEWAY_UNREACHABLE, reason=type(error).__name__) from error
        try:
            parsed = SecretResponse.model_validate_json(body)
        except ValidationError as error:
            raise WecomSecretError(Code.WECOM_GATEWAY_BAD_ANSWER) from error
        if parsed.retCode != SUCCESS or parsed.item is None:
            raise WecomSecretError(Code.WECOM_GATEWAY_REFUSED, ret_code=parsed.retCode, message=parsed.retMsg[:200])
        return parsed.item

    async def current_secret(self) -> str | None:
        """The secret WeCom signs must include, or None when the enterprise has not enabled it."""
        try:
            cached = await self._redis.get(self._cache_key)
        except (RedisError, OSError):
            cached = None
        if cached is not None:
            item = SecretItem.model_validate(json.loads(cached))
        else:
            item = await self.fetch()
            try:
                await self._redis.set(self._cache_key, item.model_dump_json(), ex=self.ttl_s)
            except (RedisError, OSError):
                log.warning("WeCom secret not cached: Redis unavailable")
        return item.secret if item.openFlag == 1 and item.secret else None
