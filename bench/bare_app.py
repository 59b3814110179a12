"""The least an HTTP admission can cost on this stack: FastAPI under uvicorn writing one Redis hash.

`python -m bench.bare_app REDIS_URL PORT`. uvicorn is configured as `sendguard run` configures it
(sendguard/daemon.py), so the gap between the two is sendguard's own work, not the server's.
"""

from __future__ import annotations

import argparse
import secrets
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from redis.typing import EncodableT, FieldT

from sendguard.state.redis_connection import packing_with_hiredis


def stored(body: dict[str, Any]) -> tuple[str, dict[FieldT, EncodableT]]:
    """The key and the hash one submission becomes: the least a queue could keep of it."""
    return f"bare:msg:{secrets.token_hex(8)}", {key: str(value) for key, value in body.items()}


def create_app(client: aioredis.Redis) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages", status_code=201)
    async def submit(body: dict[str, Any]) -> dict[str, str]:
        key, record = stored(body)
        await client.hset(key, mapping=record)
        return {"id": key.rpartition(":")[2], "status": "queued"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("redis_url")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    client = aioredis.Redis.from_url(args.redis_url, decode_responses=True)
    packing_with_hiredis(client.connection_pool)  # as sendguard's client packs: the same C packer
    config = uvicorn.Config(
        create_app(client),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
