"""The only code that talks to the kernel's IPVS table.

Theory of operation: ``NetlinkIpvs`` is a blocking generic-netlink client on
a plain ``AF_NETLINK`` socket: requests are encoded by ``pyalived.ipvs.genl``
and written in batches (many messages per ``sendmsg``; the kernel executes
them in order and only the last asks for an ack, so a batch costs one
syscall each way and failures come back as error replies naming their
sequence number).  Blocking calls never run on the trio loop:
``IpvsTableManager`` serialises them onto one worker thread at a time
(``trio.to_thread`` with a ``CapacityLimiter(1)``; the socket has no thread
affinity).  ``dump_detailed`` reads the table with each service's and
destination's statistics and connection counts (``IpvsTableManager.read_stats``,
for the metrics); ``dump`` is the same read without them.  ``set_timeouts``,
``get_timeouts`` and ``flush`` are the table-wide commands (``lvs_timeouts``,
``lvs_flush``, ``lvs_flush_on_stop``); the manager uses them only on a kernel
client that has them (``IpvsGlobalKernel``).

Ownership: the manager owns exactly the services its configuration
describes.  On start it reads the kernel table and *adopts* existing entries
that the config describes (correcting their attributes), adds what is
missing, and never touches services it does not own, nor destinations in its
services that the config has never described (``lvs_flush`` first empties
the whole table, as keepalived does at start).  On stop it deletes its
services, as keepalived 2.2.7 does on SIGTERM (measured: every configured
virtual server is deleted, pre-existing or not, and with it every real server
in it; unrelated services stay).  ``release_on_stop=False`` leaves the table
as it is (keepalived's ``--dont-release-ipvs``); ``flush_on_stop`` (global
``lvs_flush_on_stop`` without ``VS``) empties the whole table instead, owned
or not, in one command.

The same client starts, stops and lists the kernel's connection-sync
daemons (``daemons``, ``start_daemon``, ``stop_daemon``): the VRRP child
opens one of its own for ``lvs_sync_daemon`` (``pyalived.vrrp.lvs_sync``).

A kernel without IPVS (no generic-netlink family "IPVS", even after
``modprobe ip_vs``) raises ``IpvsUnavailable`` from ``NetlinkIpvs``; the
manager logs that cause once and keeps running without a table.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

import trio

from pyalived.ipvs import genl
from pyalived.ipvs.model import (
    DeleteService,
    DestKey,
    Op,
    Service,
    ServiceEntry,
    ServiceKey,
    Table,
    Timeouts,
    apply_except,
    diff,
    restrict,
    union,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
BATCH_BYTES = 64 * 1024
# Every failing request queues one error reply (about 1 KiB of receive buffer
# each, skb overhead included): bound the batch so a batch that fails entirely
# still fits the default 208 KiB receive buffer.
BATCH_MESSAGES = 128
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 4 * 1024 * 1024


class IpvsUnavailable(RuntimeError):
    """The running kernel offers no IPVS netlink interface."""


@dataclass(frozen=True)
class OpFailure:
    op: Op
    errno: int
    detail: str | None = None

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.op}: {os.strerror(self.errno)}{extra}"


@dataclass(frozen=True)
class ServiceDump:
    """One kernel service with its statistics and its destinations' counts and statistics."""

    service: Service
    stats: genl.Stats = field(default_factory=genl.Stats)
    dests: Mapping[DestKey, genl.DestInfo] = field(default_factory=dict)

    def entry(self) -> ServiceEntry:
        return ServiceEntry(self.service, {k: d.dest for k, d in self.dests.items()})


class IpvsKernel(Protocol):
    """Blocking access to an IPVS table (real: ``NetlinkIpvs``; tests: a fake)."""

    def dump(self) -> dict[ServiceKey, ServiceEntry]: ...

    def execute(self, ops: Sequence[Op]) -> list[OpFailure]: ...

    def close(self) -> None: ...


@runtime_checkable
class IpvsStatsKernel(Protocol):
    """An ``IpvsKernel`` that can also report connection counts and traffic statistics."""

    def dump_detailed(
        self, keys: Collection[ServiceKey] | None = None
    ) -> dict[ServiceKey, ServiceDump]: ...


@runtime_checkable
class IpvsGlobalKernel(Protocol):
    """An ``IpvsKernel`` with the table-wide commands."""

    def set_timeouts(self, timeouts: Timeouts) -> None: ...

    def get_timeouts(self) -> Timeouts: ...

    def flush(self) -> None: ...


class NetlinkIpvs:
    """Blocking IPVS generic-netlink client (use from one thread at a time)."""

    def __init__(self, *, load_module: bool = True) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            for force, plain in (
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            ):
                try:
                    self._sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
                except OSError:  # not CAP_NET_ADMIN: capped by net.core.[rw]mem_max
                    self._sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                try:
                    self._sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass
            self._sock.bind((0, 0))
            self._buf = bytearray(SOCKET_BUFFER)
            self._seq = 0
            try:
                self.family_id = self._resolve()
            except IpvsUnavailable:
                if not load_module or not _modprobe("ip_vs"):
                    raise
                self.family_id = self._resolve()
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _recv(self) -> list[genl.Reply]:
        # One reusable buffer: ``recv(4 MiB)`` would allocate (and give back) 4 MiB
        # per datagram, which dominated reading a large table back.
        try:
            n = self._sock.recv_into(self._buf)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                # Replies were dropped; the caller's view of the table is unreliable.
                raise OSError(errno.ENOBUFS, "IPVS netlink replies lost (receive buffer)") from exc
            raise
        return list(genl.split(bytes(memoryview(self._buf)[:n])))

    def _resolve(self) -> int:
        seq = self._next_seq()
        self._sock.send(genl.get_family_request(seq))
        family: int | None = None
        while True:
            for r in self._recv():
                if r.seq != seq:
                    continue
                if r.type == genl.NLMSG_ERROR:
                    if r.error == 0 and family is not None:
                        return family
                    if r.error == errno.ENOENT:
                        raise IpvsUnavailable(
                            "the kernel has no IPVS support: generic netlink family "
                            "'IPVS' not found (kernel built without CONFIG_IP_VS, or "
                            "module ip_vs not loadable)"
                        )
                    raise OSError(r.error, f"IPVS family lookup: {os.strerror(r.error)}")
                family = genl.decode_family_id(r)

    def _dump(self, request: bytes, seq: int) -> list[genl.Reply]:
        return self._ack(request, seq, "IPVS dump")

    def dump(self) -> dict[ServiceKey, ServiceEntry]:
        return {k: d.entry() for k, d in self.dump_detailed().items()}

    def dump_detailed(
        self, keys: Collection[ServiceKey] | None = None
    ) -> dict[ServiceKey, ServiceDump]:
        """The kernel's services (only ``keys``, if given) with statistics and destinations."""
        seq = self._next_seq()
        services = [
            genl.decode_service_info(r)
            for r in self._dump(genl.dump_services_request(self.family_id, seq), seq)
        ]
        table: dict[ServiceKey, ServiceDump] = {}
        for info in services:
            key = info.service.key
            if keys is not None and key not in keys:
                continue
            seq = self._next_seq()
            replies = self._dump(genl.dump_dests_request(self.family_id, key, seq), seq)
            dests = [genl.decode_dest_info(r, key.family) for r in replies]
            table[key] = ServiceDump(info.service, info.stats, {d.dest.key: d for d in dests})
        return table

    def _ack(self, request: bytes, seq: int, what: str) -> list[genl.Reply]:
        """Send one request; its replies up to the ack, or a dump's up to its end
        (raises OSError on an error)."""
        self._sock.send(request)
        out: list[genl.Reply] = []
        while True:
            for r in self._recv():
                if r.seq != seq:
                    continue
                if r.type == genl.NLMSG_DONE:
                    return out
                if r.type == genl.NLMSG_ERROR:
                    if r.error:
                        detail = genl.decode_error_text(r)
                        extra = f" ({detail})" if detail else ""
                        raise OSError(r.error, f"{what}: {os.strerror(r.error)}{extra}")
                    return out
                out.append(r)
                if not r.flags & genl.NLM_F_MULTI:
                    return out

    def set_timeouts(self, timeouts: Timeouts) -> None:
        seq = self._next_seq()
        self._ack(genl.set_config_request(self.family_id, timeouts, seq), seq, "IPVS timeouts")

    def get_timeouts(self) -> Timeouts:
        seq = self._next_seq()
        replies = self._ack(genl.get_config_request(self.family_id, seq), seq, "IPVS config")
        if not replies:
            raise OSError(errno.EIO, "IPVS config: no reply")
        return genl.decode_config(replies[0])

    def flush(self) -> None:
        seq = self._next_seq()
        self._ack(genl.flush_request(self.family_id, seq), seq, "IPVS flush")

    # -- the connection-synchronisation daemons (driven by the VRRP child) --

    def daemons(self) -> list[genl.SyncDaemon]:
        """The kernel's running sync daemons (master first, then backup)."""
        seq = self._next_seq()
        replies = self._dump(genl.dump_daemons_request(self.family_id, seq), seq)
        return [genl.decode_daemon(r) for r in replies]

    def start_daemon(self, daemon: genl.SyncDaemon) -> None:
        """Start one sync daemon; OSError (EEXIST if that state already runs)."""
        seq = self._next_seq()
        self._ack(genl.new_daemon_request(self.family_id, daemon, seq), seq,
                  "IPVS sync daemon start")

    def stop_daemon(self, state: int) -> None:
        """Stop the master or backup daemon; OSError (ESRCH if it does not run)."""
        seq = self._next_seq()
        self._ack(genl.del_daemon_request(self.family_id, state, seq), seq,
                  "IPVS sync daemon stop")

    def execute(self, ops: Sequence[Op]) -> list[OpFailure]:
        """Run ``ops`` in order, in batches; return the failed ones."""
        failures: list[OpFailure] = []
        i = 0
        while i < len(ops):
            batch: list[bytes] = []
            by_seq: dict[int, Op] = {}
            size = 0
            while i < len(ops) and size < BATCH_BYTES and len(batch) < BATCH_MESSAGES:
                seq = self._next_seq()
                last = i + 1 == len(ops)
                cmd, attrs = genl.op_payload(ops[i])
                msg = genl.message(self.family_id, cmd, attrs, seq)
                batch.append(msg)
                by_seq[seq] = ops[i]
                size += len(msg)
                i += 1
                if last:
                    break
            # Only the final message asks for an ack; errors are always reported.
            final = bytearray(batch[-1])
            final[6:8] = (genl.NLM_F_REQUEST | genl.NLM_F_ACK).to_bytes(2, "little")
            batch[-1] = bytes(final)
            failures += self._send_batch(b"".join(batch), by_seq, seq)
        return failures

    def _send_batch(self, data: bytes, by_seq: dict[int, Op], last_seq: int) -> list[OpFailure]:
        self._sock.send(data)
        failures: list[OpFailure] = []
        while True:
            for r in self._recv():
                if r.type != genl.NLMSG_ERROR or r.seq not in by_seq:
                    continue
                if r.error:
                    failures.append(OpFailure(by_seq[r.seq], r.error, genl.decode_error_text(r)))
                if r.seq == last_seq:
                    return failures


def _modprobe(module: str) -> bool:
    try:
        done = subprocess.run(
            ["modprobe", "-q", module], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class IpvsTableManager:
    """Keeps the kernel's IPVS table equal to the desired one, for owned entries.

    ``open_kernel`` opens the blocking client (default: ``NetlinkIpvs``); it
    runs in the worker thread, as does every other kernel call.
    """

    def __init__(
        self,
        open_kernel: Callable[[], IpvsKernel] = NetlinkIpvs,
        *,
        release_on_stop: bool = True,
        flush_at_start: bool = False,
        flush_on_stop: bool = False,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._open = open_kernel
        self.flush_at_start = flush_at_start
        self.flush_on_stop = flush_on_stop
        self.timeouts = timeouts
        self._kernel: IpvsKernel | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._owned: dict[ServiceKey, ServiceEntry] = {}
        self.release_on_stop = release_on_stop
        self.unavailable: str | None = None  # the cause, once IPVS proved missing

    @property
    def owned(self) -> Table:
        """This manager's view of the entries it owns in the kernel."""
        return self._owned

    async def _call(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def start(self, desired: Table) -> list[OpFailure]:
        """Open the kernel table, adopt described entries, program the rest."""
        try:
            self._kernel = await self._call(self._open)
        except IpvsUnavailable as exc:
            self.unavailable = str(exc)
            log.error("IPVS disabled: %s", exc)
            return []
        kernel = self._kernel
        if isinstance(kernel, IpvsGlobalKernel):
            if self.flush_at_start:
                try:
                    await self._call(kernel.flush)
                    log.info("IPVS: table flushed (lvs_flush)")
                except OSError as exc:
                    log.error("IPVS: lvs_flush failed: %s", exc)
            await self.set_timeouts(self.timeouts)
        return await self._sync(desired, resync=True)

    async def set_timeouts(self, timeouts: Timeouts | None) -> None:
        """Program ``lvs_timeouts`` (None or all 0: nothing to do); failures are logged."""
        self.timeouts = timeouts
        kernel = self._kernel
        if timeouts is None or timeouts == Timeouts() or not isinstance(kernel, IpvsGlobalKernel):
            return
        try:
            await self._call(lambda: kernel.set_timeouts(timeouts))
            log.info("IPVS: timeouts set: tcp %d tcpfin %d udp %d (0: unchanged)",
                     timeouts.tcp, timeouts.tcpfin, timeouts.udp)
        except OSError as exc:
            log.error("IPVS: lvs_timeouts failed: %s", exc)

    async def update(
        self, desired: Table, changed: Collection[ServiceKey] | None = None
    ) -> list[OpFailure]:
        """Bring the owned part of the kernel table to ``desired``.

        ``changed``, if given, names the only services that may differ from
        what was last programmed (the others are not even compared).
        """
        if self._kernel is None:
            return []
        return await self._sync(desired, resync=False, keys=changed)

    async def _sync(
        self, desired: Table, *, resync: bool, keys: Collection[ServiceKey] | None = None
    ) -> list[OpFailure]:
        kernel = self._kernel
        assert kernel is not None
        if resync:
            keys = None
            current = await self._call(kernel.dump)
            # Everything we owned or are about to own, as the kernel has it now.
            self._owned = restrict(current, union(desired, self._owned))
        ops = diff(self._owned, desired, keys)
        if not ops:
            return []
        failures = await self._call(lambda: kernel.execute(ops))
        self._owned = apply_except(self._owned, ops, [f.op for f in failures])
        if failures and not resync:
            # Someone else changed our entries (EEXIST/ENOENT): reread and retry once.
            return await self._sync(desired, resync=True)
        for f in failures:
            log.error("IPVS: %s", f)
        return failures

    async def read_table(self) -> dict[ServiceKey, ServiceEntry]:
        """The whole kernel table (owned or not)."""
        kernel = self._kernel
        if kernel is None:
            return {}
        return await self._call(kernel.dump)

    async def read_stats(
        self, keys: Collection[ServiceKey] | None = None
    ) -> dict[ServiceKey, ServiceDump]:
        """Statistics of the kernel's services (``keys`` only, if given), read in the worker.

        Empty without a kernel table or with a kernel client that cannot report them.
        """
        kernel = self._kernel
        if kernel is None or not isinstance(kernel, IpvsStatsKernel):
            return {}
        return await self._call(lambda: kernel.dump_detailed(keys))

    async def stop(self) -> list[OpFailure]:
        """Delete the owned services (unless ``release_on_stop`` is off) and close."""
        kernel, self._kernel = self._kernel, None
        if kernel is None:
            return []
        failures: list[OpFailure] = []
        try:
            if self.release_on_stop and self.flush_on_stop and isinstance(
                kernel, IpvsGlobalKernel
            ):
                try:
                    await self._call(kernel.flush)
                    self._owned = {}
                except OSError as exc:
                    log.error("IPVS: lvs_flush_on_stop failed: %s", exc)
            if self.release_on_stop and self._owned:
                ops: list[Op] = [DeleteService(k) for k in self._owned]
                failures = await self._call(lambda: kernel.execute(ops))
                self._owned = {}
        finally:
            await self._call(kernel.close)
        return failures

    async def run(
        self, desired: Table, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Service task: program ``desired``, report started, release on cancellation."""
        try:
            await self.start(desired)
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.stop()
