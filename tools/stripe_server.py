"""The local Stripe for `make run` and the tests: localstripe, a stateful fake of Stripe's API, on loopback.

    .venv/bin/python -m tools.stripe_server --port 8420 --state DATA_DIR/stripe/state.pickle

localstripe's own command listens on every interface and keeps its state in
/tmp/localstripe.pickle, one file for every run on the machine. This one listens
on 127.0.0.1 only and keeps the state where it is told (the data folder's
`stripe/`, this user's only), so a second `make run` finds its payments again;
without `--state` it keeps nothing (the tests). Point the app at it with
`STRIPE_API_BASE=http://127.0.0.1:<port>` and any `STRIPE_API_KEY`.

`--confirm-delay S` makes it a slow provider: it confirms a payment at once and
answers S seconds later, so a crash test (tools/chaos.py) finds charges in
flight to kill a worker under, with the money already taken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
from pathlib import Path

from aiohttp import web
from localstripe import resources
from localstripe.server import app


def keep_state_in(path: Path | None) -> None:
    """Make localstripe's store load from and save to `path` (nothing, with None)."""
    store = resources.store

    def save() -> None:
        if path is None:
            return
        temporary = path.with_suffix(".tmp")
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
            pickle.dump(dict(store), file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)

    store.dump_to_disk = save  # localstripe calls it after every change
    if path is not None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            with open(path, "rb") as file:
                dict.update(store, pickle.load(file))  # its own state file, written by `save` above


def answer_confirms_late(delay: float) -> None:
    """Hold each confirm's answer `delay` seconds after localstripe acted on it."""

    @web.middleware
    async def slow_confirm(request: web.Request, handler):
        response = await handler(request)
        if request.method == "POST" and request.path.endswith("/confirm"):
            await asyncio.sleep(delay)
        return response

    app.middlewares.append(slow_confirm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOCALSTRIPE_PORT") or 8420))
    parser.add_argument("--state", type=Path, help="where to keep the payments between runs (default: nowhere)")
    parser.add_argument("--confirm-delay", type=float, default=0.0, help="seconds a confirm's answer waits (crash tests)")
    args = parser.parse_args()
    keep_state_in(args.state)
    if args.confirm_delay > 0:
        answer_confirms_late(args.confirm_delay)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=lambda message: print(message, flush=True))


if __name__ == "__main__":
    main()
