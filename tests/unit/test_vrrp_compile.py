"""From a vrrp_instance to its driver's parameters, and notify commands: pure, exact."""

from __future__ import annotations

from ipaddress import IPv4Address

from pyalived.config.model import (
    Authentication,
    AuthType,
    Config,
    Notify,
    TrackInterface,
    TrackScriptRef,
    VrrpScript,
    VrrpSyncGroup,
)
from pyalived.vrrp import packet
from pyalived.vrrp.compile import (
    TrackingSpec,
    advert_destinations,
    advert_for,
    advert_proto,
    advert_source,
    build_tracking,
    expectation,
    sync_group_of,
    tracking_spec,
)
from pyalived.vrrp.fsm import State
from pyalived.vrrp.notify import notify_commands
from tests.unit.test_instance import VIP, instance_conf

CHK = VrrpScript(name="chk", script="/bin/chk", weight=-20)
GRP_CHK = VrrpScript(name="grp_chk", script="/bin/grp", weight=0)
GROUP = IPv4Address("224.0.0.18")
PRIMARY = IPv4Address("198.18.0.11")


def tracked_config(**changes: object) -> Config:
    conf = instance_conf(
        track_script=(TrackScriptRef("chk"), TrackScriptRef("gone", weight=5)),
        track_interface=(TrackInterface("eth1", -10),),
        **changes,
    )
    group = VrrpSyncGroup(
        "G", ("VI_1",), track_script=(TrackScriptRef("grp_chk", weight=-7),),
        track_interface=(TrackInterface("eth2"),),
    )
    return Config(vrrp_scripts=(CHK, GRP_CHK), vrrp_instances=(conf,), vrrp_sync_groups=(group,))


def test_tracking_spec_lists_own_then_group_items_with_their_scripts() -> None:
    config = tracked_config()
    (conf,) = config.vrrp_instances
    assert sync_group_of(config, "VI_1") is config.vrrp_sync_groups[0]
    assert sync_group_of(config, "VI_2") is None
    assert tracking_spec(config, conf) == TrackingSpec(
        scripts=(
            (TrackScriptRef("chk"), CHK),
            (TrackScriptRef("gone", weight=5), None),
            (TrackScriptRef("grp_chk", weight=-7), GRP_CHK),
        ),
        interfaces=(TrackInterface("eth1", -10), TrackInterface("eth2")),
        primary="eth0",
    )


def test_build_tracking_skips_undefined_scripts_and_tracks_the_primary_first() -> None:
    config = tracked_config()
    tracking = build_tracking(config, config.vrrp_instances[0])
    assert tracking.script_names == ("chk", "grp_chk")
    assert tracking.interface_names == ("eth0", "eth1", "eth2")
    tracking.update_script("chk", False)  # the script's own weight: -20
    tracking.update_script("grp_chk", True)
    assert tracking.verdict().priority == 70
    tracking.update_script("grp_chk", False)  # the reference's weight -7 overrides 0
    assert tracking.verdict().priority == 63


def test_dont_track_primary_leaves_the_interface_out() -> None:
    config = tracked_config(dont_track_primary=True)
    (conf,) = config.vrrp_instances
    assert tracking_spec(config, conf).primary is None
    assert build_tracking(config, conf).interface_names == ("eth1", "eth2")


def test_advert_settings() -> None:
    conf = instance_conf(
        priority=100, advert_int=2.4, authentication=Authentication(AuthType.PASS, b"longpassword")
    )
    assert advert_for(conf, 0) == packet.Advert(
        vrid=51, priority=0, advert_int=2, addresses=(VIP.ip,), auth_type=1, auth_data=b"longpass"
    )
    assert advert_proto(conf) == packet.VRRP_PROTO
    assert expectation(conf) == packet.Expectation(
        vrid=51, advert_int=2, addresses=frozenset({VIP.ip}), auth_type=AuthType.PASS,
        auth_key=b"longpassword",
    )
    ah = instance_conf(authentication=Authentication(AuthType.AH, b"secret"))
    assert advert_proto(ah) == packet.AH_PROTO
    assert advert_for(ah, 90).auth_type == 2 and advert_for(ah, 90).auth_data == bytes(8)
    assert advert_source(conf, PRIMARY) == PRIMARY
    assert advert_source(instance_conf(mcast_src_ip=VIP.ip), PRIMARY) == VIP.ip
    assert advert_destinations(conf, GROUP) == (GROUP,)
    peers = (IPv4Address("198.18.0.12"), IPv4Address("198.18.0.13"))
    assert advert_destinations(instance_conf(unicast_peer=peers), GROUP) == peers


def test_notify_commands_of_an_instance_and_a_group() -> None:
    notify = Notify(master="/bin/up 'a b'", stop="/bin/stop", generic="/bin/notify -v")
    assert notify_commands(notify, State.MASTER, "INSTANCE", "VI_1", 100) == [
        ["/bin/up", "a b"],
        ["/bin/notify", "-v", "INSTANCE", "VI_1", "MASTER", "100"],
    ]
    assert notify_commands(notify, State.INIT, "GROUP", "G") == [
        ["/bin/stop"],
        ["/bin/notify", "-v", "GROUP", "G", "STOP"],
    ]
    assert notify_commands(notify, State.FAULT, "INSTANCE", "VI_1", 90) == [
        ["/bin/notify", "-v", "INSTANCE", "VI_1", "FAULT", "90"],
    ]
    assert notify_commands(Notify(), State.BACKUP, "INSTANCE", "VI_1", 90) == []
