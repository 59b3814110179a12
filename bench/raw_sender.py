"""aiosmtplib alone: the raw limit of delivery to the sink over a number of connections.

`python -m bench.raw_sender HOST PORT COUNT CONNECTIONS`. It runs in a process of its own, as the
daemon does, so neither side of the comparison shares an interpreter with the sink.
"""

from __future__ import annotations

import argparse
import asyncio

import aiosmtplib
import uvloop

from bench.mail import SENDER_ADDRESS, raw_message


async def send(host: str, port: int, count: int, connections: int) -> None:
    """Send `count` messages, each over whichever of the persistent connections is free."""
    numbers = iter(range(count))

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port)
        await client.connect()
        for number in numbers:
            to = f"raw{number}@customer.example"
            await client.sendmail(SENDER_ADDRESS, [to], raw_message(to, number))
        await client.quit()

    await asyncio.gather(*(connection() for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("connections", type=int)
    args = parser.parse_args()
    # The daemon's own event loop, so the reference is not handicapped by a slower one.
    uvloop.run(send(args.host, args.port, args.count, args.connections))


if __name__ == "__main__":
    main()
