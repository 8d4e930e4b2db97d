"""What one gateway serves: where each model goes, what it costs, the default budget, its database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from aicommons.spec.models import Budget, Gateway


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Price:
    prompt: Decimal = Decimal(0)       # per token
    completion: Decimal = Decimal(0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return self.prompt * prompt_tokens + self.completion * completion_tokens


@dataclass(frozen=True)
class GatewayConfig:
    conninfo: str                               # libpq connection string of the gateway's database
    routes: dict[str, str]                      # model -> upstream base URL (ending in /v1)
    budget: Budget = field(default_factory=Budget)
    prices: dict[str, Price] = field(default_factory=dict)
    default_max_tokens: int = 1024
    clock: Callable[[], datetime] = utc_now     # injected by tests: windows reset on time
    pool_size: int = 10
    cors_origin_regex: str | None = None       # browser apps of the site (ChainForge) calling the public route
    upstream_timeout: float = 600.0

    @classmethod
    def from_spec(cls, gw: Gateway, conninfo: str, routes: dict[str, str] | None = None, **kw) -> GatewayConfig:
        """`routes`: model -> upstream (plan/models.py gateway_routes); default: gw.upstreams."""
        per_million = Decimal(1_000_000)
        if routes is None:
            routes = {m: up.url.rstrip("/") for up in gw.upstreams for m in up.models}
        return cls(conninfo=conninfo, routes=routes,
                   budget=gw.budget, default_max_tokens=gw.default_max_tokens,
                   prices={m: Price(Decimal(str(p.prompt)) / per_million, Decimal(str(p.completion)) / per_million)
                           for m, p in gw.prices.items()}, **kw)

    def price(self, model: str) -> Price:
        return self.prices.get(model, Price())
