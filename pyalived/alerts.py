"""Each half's alert outlets: notify FIFOs and mail alerts, configured from global_defs.

Theory of operation: ``VrrpAlerts`` is what the VRRP half reports its state
changes to (the ``StateAlerts`` port of ``pyalived.vrrp.ports``), next to
the notify scripts: each change of an instance or a sync group is written
to ``notify_fifo`` and ``vrrp_notify_fifo`` (``pyalived.fifo``) and, where
that instance's or group's ``smtp_alert`` is on, queued as a mail
(``pyalived.mail``).  No mail is sent for a stop (keepalived 2.2.7 starts
one on its way out but never finishes it).  ``LvsAlerts`` is the checker
half's: real server and virtual server (quorum) changes go to
``notify_fifo`` and ``lvs_notify_fifo``, and are mailed where the real
server's or virtual server's ``smtp_alert`` is on (by default, as in
keepalived 2.2.7: ``smtp_alert_checker``, else ``smtp_alert``, else on for
real servers and off for virtual servers).  Each virtual server's quorum
state is written (and mailed) once at start, as keepalived does.

``notify_fifo_script`` is started by the VRRP half, or by the checker half
when no VRRP half runs (``-C``), never by both; each half starts the script
of its own FIFO.  ``run`` is the service (the mailer and the FIFOs);
``configure`` applies a reloaded configuration in place: the mail settings
and every ``smtp_alert`` at once, the FIFOs reopened (and their scripts
restarted) only when their settings changed.
"""

from __future__ import annotations

import trio

from pyalived.config.model import Config, GlobalDefs, NotifyFifo
from pyalived.fifo import NotifyFifos, group_line, instance_line, rs_line, vs_line
from pyalived.mail import (
    Deliver,
    Mailer,
    deliver,
    group_alert,
    instance_alert,
    mail_settings,
    real_server_alert,
    virtual_server_alert,
)
from pyalived.scripts import ScriptRunner


def _fifos(g: GlobalDefs, own: NotifyFifo | None, shared_script: bool
           ) -> tuple[list[NotifyFifo], list[bool]]:
    confs: list[NotifyFifo] = []
    scripts: list[bool] = []
    if g.notify_fifo is not None:
        confs.append(g.notify_fifo)
        scripts.append(shared_script)
    if own is not None:
        confs.append(own)
        scripts.append(True)
    return confs, scripts


class VrrpAlerts:
    """The VRRP half's ``StateAlerts`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        runner: ScriptRunner,
        *,
        deliver: Deliver = deliver,
        hostname: str | None = None,
    ) -> None:
        self._hostname = hostname
        self.mailer = Mailer(None, deliver=deliver)
        self.fifos = NotifyFifos(runner)
        self._smtp_instances: dict[str, bool] = {}
        self._smtp_groups: dict[str, bool] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        g = config.global_defs
        self.mailer.configure(mail_settings(g, self._hostname))
        confs, scripts = _fifos(g, g.vrrp_notify_fifo, shared_script=True)
        self.fifos.configure(confs, script_user=g.script_user, scripts=scripts,
                             script_group=g.script_group)
        self._smtp_instances = {i.name: i.smtp_alert for i in config.vrrp_instances}
        self._smtp_groups = {s.name: s.smtp_alert for s in config.vrrp_sync_groups}

    def instance_state(self, name: str, state: str, priority: int) -> None:
        self.fifos.write(instance_line(name, state, priority))
        if state != "STOP" and self._smtp_instances.get(name, False):
            self.mailer.send(instance_alert(name, state))

    def group_state(self, name: str, state: str) -> None:
        self.fifos.write(group_line(name, state))
        if state != "STOP" and self._smtp_groups.get(name, False):
            self.mailer.send(group_alert(name, state))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fifos.run)
            await nursery.start(self.mailer.run)
            task_status.started()


def checker_alert_defaults(g: GlobalDefs) -> tuple[bool, bool]:
    """(virtual server, real server) ``smtp_alert`` when the block has none: the global
    ``smtp_alert_checker``, else ``smtp_alert``, else off for a virtual server and on
    for a real server (keepalived 2.2.7, seen with a mail server)."""
    for flag in (g.smtp_alert_checker, g.smtp_alert):
        if flag is not None:
            return flag, flag
    return False, True


class LvsAlerts:
    """The checker half's outlets: ``notify_fifo``, ``lvs_notify_fifo`` and mail alerts."""

    def __init__(
        self,
        config: Config,
        runner: ScriptRunner,
        *,
        vrrp_running: bool,
        deliver: Deliver = deliver,
        hostname: str | None = None,
    ) -> None:
        self._vrrp_running = vrrp_running
        self._hostname = hostname
        self.fifos = NotifyFifos(runner)
        self.mailer = Mailer(None, deliver=deliver)
        self._defaults = (False, True)
        self.configure(config)

    def configure(self, config: Config) -> None:
        g = config.global_defs
        confs, scripts = _fifos(g, g.lvs_notify_fifo, shared_script=not self._vrrp_running)
        self.fifos.configure(confs, script_user=g.script_user, scripts=scripts,
                             script_group=g.script_group)
        self.mailer.configure(mail_settings(g, self._hostname))
        self._defaults = checker_alert_defaults(g)

    def real_server(self, rs: str, vs: str, up: bool, checker: str | None = None,
                    smtp_alert: bool | None = None) -> None:
        """``checker``: the kind (TCP_CHECK...) that decided; None sends no mail."""
        self.fifos.write(rs_line(rs, vs, up))
        mail = self._defaults[1] if smtp_alert is None else smtp_alert
        if mail and checker is not None:
            self.mailer.send(real_server_alert(rs, vs, up, checker))

    def virtual_server(self, vs: str, up: bool, quorum: int = 1, hysteresis: int = 0,
                       weight: int = 0, smtp_alert: bool | None = None, *,
                       starting: bool = False) -> None:
        self.fifos.write(vs_line(vs, up))
        mail = self._defaults[0] if smtp_alert is None else smtp_alert
        if mail:
            self.mailer.send(virtual_server_alert(vs, up, quorum, hysteresis, weight,
                                                  starting=starting))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fifos.run)
            await nursery.start(self.mailer.run)
            task_status.started()
