"""The disconnect watchers of streams: one shared timer, a task only for long streams."""

from __future__ import annotations

import asyncio

from tallygate.proxy.disconnect import WATCH_AFTER, ClientWatch, Watchers


async def test_short_streams_never_start_a_watcher_and_long_ones_do():
    watchers = Watchers(asyncio.get_running_loop())
    calls = []

    async def receive():
        calls.append(1)
        await asyncio.sleep(60)

    short = ClientWatch(receive, watchers)
    short.stop()  # ended within the first period, as nearly every stream does
    long = ClientWatch(receive, watchers)
    await asyncio.sleep(WATCH_AFTER * 0.5)
    assert long.task is None  # not yet: a stream younger than one period is never watched
    await asyncio.sleep(WATCH_AFTER * 2)
    assert short.task is None
    assert long.task is not None and calls == [1]
    long.stop()
    await asyncio.sleep(WATCH_AFTER * 2.5)
    assert watchers.timer is None and not watchers.young and not watchers.old  # idle: no timer left
    assert long.task.cancelled()


async def test_a_client_that_hangs_up_cancels_the_relay():
    watchers = Watchers(asyncio.get_running_loop())

    async def receive():
        return {"type": "http.disconnect"}

    async def relay():
        watch = ClientWatch(receive, watchers)
        watch.resp = object()  # the relay is reading the upstream
        try:
            await asyncio.sleep(60)
        finally:
            watch.stop()
            relay.watch = watch

    task = asyncio.ensure_future(relay())
    await asyncio.sleep(WATCH_AFTER * 3)
    assert task.cancelled()
    assert relay.watch.gone
