"""Engines: where a store set's units run. `local`: this process, or a pool of `num_proc`
processes; `ray`: Ray tasks on a local instance or a cluster whose nodes share OUT's file system.

Both yield units as they finish, in any order (the driver orders the shards). A Ray task whose
worker or node dies is retried (RAY_MAX_RETRIES) and, a unit being idempotent, gives the same
shard; an error raised by the unit itself (a bad row, a vanished input) stops the job.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import socket
from collections.abc import Iterator
from typing import Any

from pegasus_gsg.data.preparation.options import PrepareConfig
from pegasus_gsg.data.preparation.units import Unit, prepare_unit
from pegasus_gsg.files import DiskFullError

RAY_MAX_RETRIES = 4
"""Times Ray runs a unit again after its worker or node died."""


def _call_unit(task: tuple[Unit, tuple[Any, ...]]) -> Unit:
    """Run one unit (named so in process titles: Ray shows `ray::_call_unit`)."""
    unit, args = task
    prepare_unit(unit, *args)
    return unit


def run_local(units: list[Unit], args: tuple[Any, ...], config: PrepareConfig) -> Iterator[Unit]:
    """Units in this process (num_proc 1) or a process pool, yielded as they finish."""
    tasks = [(u, args) for u in units]
    if config.num_proc == 1 or len(units) <= 1:
        yield from map(_call_unit, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(config.num_proc, maxtasksperchild=None) as pool:
        yield from pool.imap_unordered(_call_unit, tasks)


def ray_init(config: PrepareConfig) -> tuple[Any, bool]:
    """Import Ray and connect (or start a local instance): (ray, whether this call initialised
    it). A Ray session the caller started is used as it is.

    Raises:
        ValueError: Ray is not installed, `ray_address` is malformed, or the cluster is
            unreachable (checked with a plain TCP connection first: Ray's own error is slow).
    """
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--engine ray needs Ray: pip install 'pegasus-gsg[ray]' (or use --engine local)"
        ) from None
    if ray.is_initialized():
        return ray, False
    address = config.ray_address
    if address is not None and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as err:
            raise ValueError(
                f"cannot reach the Ray cluster at {address} ({err}); start one with "
                "`ray start --head`, or leave out --ray-address for a local Ray instance"
            ) from None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        kwargs["num_cpus"] = config.num_proc
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ValueError(f"cannot connect to the Ray cluster at {address}: {err}") from None
    return ray, True


def run_ray(ray: Any, units: list[Unit], args: tuple[Any, ...]) -> Iterator[Unit]:
    """Units as Ray tasks (at most 2 per cluster CPU in flight), yielded as they finish.

    A task whose worker or node dies is retried by Ray (RAY_MAX_RETRIES); an error raised by
    the unit itself (a bad row, a vanished input) is not retried: it stops the job.
    """
    if units:
        remote = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES, retry_exceptions=False)(
            _call_unit
        )
        in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, Unit] = {}
        queue = collections.deque(units)
        while queue or pending:
            while queue and len(pending) < in_flight:
                unit = queue.popleft()
                pending[remote.remote((unit, args))] = unit
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                ray.get(ready[0])
            except ray.exceptions.RayTaskError as err:
                cause = err.cause
                if isinstance(cause, DiskFullError):  # one line, as the local engine's
                    raise cause.with_details(None, None) from None
                if isinstance(cause, (ValueError, FileNotFoundError)):
                    raise type(cause)(str(cause)) from None
                raise
            yield unit
