"""The local lab: the topology as real Debian 12 hosts booted with systemd-nspawn.

One cached debootstrap base; per host an overlay root, a cgroup of its own and one veth per zone leg
plugged into that zone's bridge; the controller owns the .1 of the management (and simulated internet)
bridges and serves packages through its own apt-cacher-ng. Everything the lab creates carries the
``rl-`` / ``rv-`` / ``rampart-lab`` names, so teardown finds it even after an interrupted run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rampart.lab import files
from rampart.lab.files import CACHE_DIR, OPS_USER, RUN_DIR
from rampart.topology import APT_PROXY_SERVICE, TIME_SERVICE, Topology

BASE_VERSION = 2  # bump when the base recipe below changes; the cache is keyed by it
SUITE = "bookworm"
CGROUP = "rampart-lab"
CGROUP_V2 = Path("/sys/fs/cgroup/unified")  # the hybrid layout the lab needs: its hosts' cgroup v2 tree
BRIDGE_PREFIX, VETH_PREFIX = "rl-", "rv-"
NFT_TABLE = "rampart_lab"
LAB_ROUTE_PROTO = "242"  # marks the lab's own unreachable routes (see ensure_network)
# The platform's package proxy and the simulated internet's upstream mirror (run dirs under RUN_DIR).
PROXY_NAMES = ("apt-cacher-ng", "upstream-mirror")
TIME_SOURCE = "time-source"  # chronyd serving the controller's clock on the topology's ntp endpoints
ALERT_RECEIVER = "alert-receiver"  # records Alertmanager's notifications (the lab's offline receiver)
ALERT_RECEIVER_SERVICE = "alert_receiver"
LAB_SERVICES = (*PROXY_NAMES, TIME_SOURCE, ALERT_RECEIVER)  # the controller-side daemons `lab down` stops
LAUNCHER = Path(__file__).with_name("launch.sh")
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "python3",
                 "python3-apt", "iproute2", "sudo", "ca-certificates", "gnupg"]
REQUIRED_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "ip": "iproute2",
                  "nft": "nftables", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
                  "apt-cacher-ng": "apt-cacher-ng", "chronyd": "chrony"}


class LabError(RuntimeError):
    """A problem the operator must fix; the message says what and how."""


def log(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def run(*cmd: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, text=True, capture_output=capture, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or '').strip()[-800:]}")
    return proc


@dataclass(frozen=True)
class Leg:
    zone: str
    address: ipaddress.IPv4Address
    prefix: int
    veth: str
    bridge: str
    isolated: bool = False  # bridge port isolation: reaches only the bridge itself and non-isolated ports

    @property
    def spec(self) -> str:
        """The launcher's form: VETH:INNER:BRIDGE[:isolated]."""
        return f"{self.veth}:{self.zone}:{self.bridge}" + (":isolated" if self.isolated else "")


def lab_mac(address: ipaddress.IPv4Address) -> str:
    """A fixed, locally administered MAC per lab address on the management LAN, so every host can pin its
    neighbours there (no ARP answer, gratuitous or not, can move an address to another host)."""
    return "02:72:" + ":".join(f"{b:02x}" for b in address.packed)


@dataclass(frozen=True)
class HostPlan:
    """What the lab builds for one host, all read from the model's per-host view."""

    legs: tuple[Leg, ...]
    memlock: bool  # CAP_IPC_LOCK for nspawn (Vault's mlock)
    default_gateway: str | None
    routes: list[tuple[str, str]]


class Lab:
    def __init__(self, topo: Topology, repo: Path):
        self.topo = topo
        self.repo = repo
        self.out = repo / files.LAB_DIR  # controller-side artifacts: keys, ssh config, known_hosts
        self.base = CACHE_DIR / f"base-{SUITE}-v{BASE_VERSION}"

    # ---- naming -----------------------------------------------------------------------------------
    def bridge(self, zone: str) -> str:
        return f"{BRIDGE_PREFIX}{zone}"

    def legs(self, host: str) -> list[Leg]:
        h = self.topo.hosts[host]
        legs = []
        wired = [(z, a) for z, a in h.addresses.items() if not self.topo.zones[z].vpn]  # vpn: wg0 on the gateway
        isolated = self.topo.host_view(host).isolated_management
        mgmt = self.topo.management_zone.name
        for i, (zone, addr) in enumerate(wired):
            legs.append(Leg(zone, addr, self.topo.zones[zone].cidr.prefixlen, f"{VETH_PREFIX}{host}-{i}",
                            self.bridge(zone), isolated and zone == mgmt))
        return legs

    def plan(self, host: str) -> HostPlan:
        view = self.topo.host_view(host)
        return HostPlan(tuple(self.legs(host)), view.memlock, _opt(view.default_gateway),
                        [(str(net), str(via)) for net, via in view.routes])

    def lab_hosts(self) -> list[str]:
        return sorted(h.name for h in self.topo.managed_hosts())

    def host_dir(self, host: str) -> Path:
        return _host_dir(host)

    # ---- preflight --------------------------------------------------------------------------------
    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it creates bridges, mounts and containers): run `sudo make lab`")
        missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
        if missing:
            raise LabError(f"missing packages: {', '.join(missing)}. `make lab` installs them "
                           f"(or: apt-get install --no-install-recommends {' '.join(missing)})")
        for feature, path in (("cgroup v1 name=systemd hierarchy", "/sys/fs/cgroup/systemd"),
                              ("cgroup v2 unified hierarchy", CGROUP_V2),
                              ("TUN device", "/dev/net/tun")):
            if not Path(path).exists():
                raise LabError(f"kernel feature missing: {feature} ({path} does not exist)")
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise LabError("kernel feature missing: overlayfs (try `modprobe overlay`)")
        for zone in self.topo.zones.values():
            if len(self.bridge(zone.name)) > 15:
                raise LabError(f"{self.topo.source}: zones.{zone.name}: name too long for a bridge (max 12)")
        for host in self.lab_hosts():
            if len(f"{VETH_PREFIX}{host}-9") > 15:
                raise LabError(f"{self.topo.source}: hosts.{host}: name too long for the lab (max 10)")
        self._check_clashes()

    def _check_clashes(self) -> None:
        """Refuse to build over addresses or routes that something else on this machine uses."""
        routes = json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
        for r in routes:
            dst, dev = r.get("dst", ""), r.get("dev", "")
            if dev.startswith(BRIDGE_PREFIX) or dst in ("default", "") or r.get("type") in ("local", "broadcast") \
                    or str(r.get("protocol")) == LAB_ROUTE_PROTO:
                continue
            try:
                net = ipaddress.IPv4Network(dst, strict=False)
            except ValueError:
                continue
            for zone in self.topo.zones.values():
                if net.overlaps(zone.cidr):
                    raise LabError(f"zone {zone.name} ({zone.cidr}) clashes with route {dst} on {dev}, which the "
                                   f"lab does not own. Change the CIDRs in {self.topo.source} or remove that route.")

    # ---- base image -------------------------------------------------------------------------------
    def ensure_base(self) -> None:
        if (self.base / ".rampart-base").exists():
            log(f"base image: cached at {self.base}")
            return
        mirror = debian_mirror()
        tmp = self.base.with_name(self.base.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        log(f"base image: debootstrap {SUITE} from {mirror} (about 90 s, cached afterwards) …")
        t0 = time.monotonic()
        run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(tmp), mirror)
        self._configure_base(tmp, mirror)
        (tmp / ".rampart-base").write_text(f"{BASE_VERSION}\n")
        tmp.rename(self.base)  # atomic: an interrupted build never looks finished
        log(f"base image: built in {time.monotonic() - t0:.0f} s")

    def _configure_base(self, root: Path, mirror: str) -> None:
        security = mirror.replace("/debian", "/debian-security") if mirror.endswith("/debian") else mirror
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n"
            f"deb {security} {SUITE}-security main\n")
        # Every host gets its own identity at first boot: no shared machine-id, hostname or host keys.
        (root / "etc/machine-id").write_text("")
        with contextlib.suppress(FileNotFoundError):
            (root / "var/lib/dbus/machine-id").unlink()
        (root / "etc/hostname").write_text("")
        for key in (root / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        chroot = ("chroot", str(root))
        run(*chroot, "systemctl", "enable", "systemd-networkd")
        run(*chroot, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer")
        run(*chroot, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", OPS_USER)
        # Ansible's become; the hardening role narrows sudo later.
        sudoers = root / f"etc/sudoers.d/{OPS_USER}"
        sudoers.write_text(f"{OPS_USER} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        run(*chroot, "apt-get", "clean")

    # ---- controller side: keys, bridges, proxy ------------------------------------------------------
    def ensure_keys(self) -> None:
        ssh = self.out / "ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        os.chmod(self.out, 0o700)
        os.chmod(ssh, 0o700)
        key = ssh / "id_ed25519"
        if not key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rampart-lab-controller", "-f", str(key))
        key.chmod(0o600)

    def ensure_network(self) -> None:
        ctl = self.topo.controller
        for zone in self.topo.zones.values():
            if zone.vpn:
                continue  # lives inside the gateway (WireGuard)
            br = self.bridge(zone.name)
            if run("ip", "link", "show", br, check=False).returncode != 0:
                run("ip", "link", "add", br, "type", "bridge")
            # Bridged frames must not pass through the machine's own netfilter (br_netfilter): the
            # lab's policy lives in its hosts' firewalls, as it would on real switches.
            run("ip", "link", "set", br, "type", "bridge", "nf_call_iptables", "0", check=False)
            run("ip", "link", "set", br, "up")
            if zone.management:  # a fixed MAC the hosts pin (see lab_mac)
                run("ip", "link", "set", br, "address", lab_mac(ctl.addresses[zone.name]))
            if zone.name in ctl.addresses:
                addr = f"{ctl.addresses[zone.name]}/{zone.cidr.prefixlen}"
                have = run("ip", "-4", "-o", "addr", "show", "dev", br).stdout
                if addr not in have:
                    run("ip", "addr", "add", addr, "dev", br)
        # Zones the controller has no leg in answer "unreachable" on the controller instead of following the
        # machine's default route: no probe or typo ever sends lab traffic out of this machine.
        for zone in self.topo.zones.values():
            if zone.name not in ctl.addresses:
                run("ip", "route", "replace", "unreachable", str(zone.cidr), "proto", LAB_ROUTE_PROTO)
        # The per-bridge nf_call_iptables=0 is OR'ed with the global sysctl: with br_netfilter loaded the
        # frames between hosts of one zone would still hit the forward chain below and be dropped.
        # The machine's values are saved first and put back by `lab down`.
        saved = RUN_DIR / "bridge-nf.json"
        knobs = {f: Path(f"/proc/sys/net/bridge/bridge-nf-call-{f}") for f in ("iptables", "ip6tables", "arptables")}
        knobs = {f: k for f, k in knobs.items() if k.exists()}
        if not saved.exists():
            saved.write_text(json.dumps({f: k.read_text().strip() for f, k in knobs.items()}))
        for knob in knobs.values():
            knob.write_text("0\n")
        # The controller must never route between lab zones or out of the lab (no internet for hosts), and
        # answers on a lab network only for its own address there (strong host model: the simulated
        # internet must not reach its management address through its internet leg).
        rules = (f"table inet {NFT_TABLE} {{\n chain forward {{ type filter hook forward priority -10; "
                 f"iifname \"{BRIDGE_PREFIX}*\" drop; oifname \"{BRIDGE_PREFIX}*\" drop; }}\n"
                 f" chain input {{ type filter hook input priority -10; "
                 f"iifname \"{BRIDGE_PREFIX}*\" fib daddr . iif type != {{ local, broadcast, multicast }} drop; }}\n"
                 f"}}\n")
        run("nft", "-f", "-", input=f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{rules}")

    def ensure_proxy(self) -> None:
        """Package sources, each an apt-cacher-ng of our own with the machine's own mirror as its only
        backend (the packaged default backends are unreachable here):

        - the platform's apt proxy, on the addresses the topology's ``apt_proxy`` service gives the controller
          (the management plane);
        - the simulated internet's upstream mirror, on the controller's addresses in external zones, so
          outside hosts get packages without any path into the platform.

        Both serve only the remapped Debian mirror (``ForceManaged``): no CONNECT tunnels, no fetches of other
        URLs, so neither can carry a connection from one zone to a host in another."""
        svc = self.topo.services.get(APT_PROXY_SERVICE)
        if svc is None:
            return
        ctl = self.topo.controller
        platform = [str(e.address) for e in self.topo.endpoints() if e.service == svc.name and e.host == ctl.name]
        upstream = [str(a) for z, a in ctl.addresses.items() if self.topo.zones[z].external]
        for name, binds in ((PROXY_NAMES[0], platform), (PROXY_NAMES[1], upstream)):
            if binds:
                self._start_proxy(name, binds, svc.port)

    def ensure_time_source(self) -> None:
        """The management plane's time source, where the topology puts one on the controller: chronyd in
        server-only mode (-x: it never steers this machine's clock), answering only the management network."""
        svc = self.topo.services.get(TIME_SERVICE)
        ctl = self.topo.controller
        eps = [e for e in self.topo.endpoints() if svc and e.service == svc.name and e.host == ctl.name]
        if not eps:
            return
        d = RUN_DIR / TIME_SOURCE
        pidfile = d / "pid"
        if _alive(pidfile):
            return
        d.mkdir(parents=True, exist_ok=True)
        lines = [f"bindaddress {e.address}" for e in eps[:1]]
        lines += [f"allow {self.topo.zones[e.zone].cidr}" for e in eps]
        lines += [f"port {svc.port}", "local stratum 8", "cmdport 0", f"driftfile {d / 'drift'}",
                  f"pidfile {d / 'chronyd.pid'}"]
        (d / "chrony.conf").write_text("\n".join(lines) + "\n")
        with open(d / "chronyd.log", "ab") as out:
            proc = subprocess.Popen(["chronyd", "-x", "-d", "-u", "root", "-f", str(d / "chrony.conf")], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pidfile.write_text(str(proc.pid))
        log(f"{TIME_SOURCE}: chronyd (server only, -x) on {eps[0].address}:{svc.port}/{svc.proto}")

    def ensure_alert_receiver(self) -> None:
        """Where the topology puts the alert receiver on the controller, the lab runs the offline webhook
        receiver there; what it records is ``files.ALERTS`` (read by the alert-delivery test)."""
        ctl = self.topo.controller
        eps = [e for e in self.topo.endpoints() if e.service == ALERT_RECEIVER_SERVICE and e.host == ctl.name]
        d = RUN_DIR / ALERT_RECEIVER
        if not eps or _alive(d / "pid"):
            return
        d.mkdir(parents=True, exist_ok=True)
        script = self.repo / "monitoring" / "receiver" / "rampart_alert_receiver.py"
        with open(d / "receiver.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, str(script), "--listen", f"{eps[0].address}:{eps[0].port}",
                                     "--out", str(RUN_DIR / files.ALERTS)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        (d / "pid").write_text(str(proc.pid))
        _wait_port(str(eps[0].address), eps[0].port, 10, ALERT_RECEIVER)
        log(f"{ALERT_RECEIVER}: recording Alertmanager's notifications on {eps[0].address}:{eps[0].port}")

    def _start_proxy(self, name: str, binds: list[str], port: int) -> None:
        conf = RUN_DIR / name
        pidfile = conf / "pid"
        if _alive(pidfile):
            return
        cache = CACHE_DIR / name
        for d in (conf / "log", cache):
            d.mkdir(parents=True, exist_ok=True)
        mirror = debian_mirror()
        (conf / "backends_debian").write_text(mirror.rstrip("/") + "/\n")
        security = mirror.rstrip("/").removesuffix("/debian") + "/debian-security/"
        (conf / "backends_debian_security").write_text(security + "\n")
        (conf / "acng.conf").write_text(
            f"CacheDir: {cache}\nLogDir: {conf / 'log'}\nSupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {port}\nBindAddress: {' '.join(binds)}\n"
            "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian\n"
            "Remap-secdeb: security.debian.org security.debian.org/debian-security deb.debian.org/debian-security "
            "/debian-security ; file:backends_debian_security\n"
            # Only the remapped mirror is served; CONNECT and any other URL are refused.
            "ForceManaged: 1\nExThreshold: 4\n")
        with open(conf / "log" / "stdout.log", "ab") as out:  # the child keeps its own copy
            proc = subprocess.Popen(["apt-cacher-ng", "-c", str(conf), "ForeGround=1"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pidfile.write_text(str(proc.pid))
        _wait_port(binds[0], port, 10, name)
        log(f"{name}: apt-cacher-ng on {', '.join(binds)}:{port} → {mirror} only")

    # ---- hosts --------------------------------------------------------------------------------------
    def ensure_host(self, host: str) -> bool:
        """Make sure a host runs; return True when it had to be (re)started."""
        d = self.host_dir(host)
        if _alive(d / "pid"):
            return False
        _stop_host(host)  # whatever a crashed or interrupted run left behind
        root, upper, work = d / "root", d / "upper", d / "work"
        for p in (root, upper, work):
            p.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "overlay", f"rampart-lab-{host}", "-o",
            f"lowerdir={self.base},upperdir={upper},workdir={work}", str(root))
        self._provision(host, root)
        legs = [leg.spec for leg in self.legs(host)]
        caps = "CAP_IPC_LOCK" if self.plan(host).memlock else ""  # Vault's mlock
        proc = subprocess.Popen([str(LAUNCHER), host, str(root), f"{CGROUP}/{host}", str(d / "console.log"),
                                 caps, "--", *legs], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        (d / "pid").write_text(str(proc.pid))
        return True

    def _provision(self, host: str, root: Path) -> None:
        """First-boot identity and network, written into the host's overlay (what cloud-init does)."""
        etc = root / "etc"
        (etc / "hostname").write_text(f"{host}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host}.{self.topo.domain} {host}\n")
        if not (etc / "machine-id").read_text().strip():
            (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
        hostkey = etc / "ssh/ssh_host_ed25519_key"
        if not hostkey.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host}", "-f", str(hostkey))
        netdir = etc / "systemd/network"
        netdir.mkdir(parents=True, exist_ok=True)
        for f in netdir.glob("10-*.network"):
            f.unlink()
        plan = self.plan(host)
        h = self.topo.hosts[host]
        for leg in plan.legs:
            lines = ["[Match]", f"Name={leg.zone}", "", "[Network]", f"Address={leg.address}/{leg.prefix}",
                     "LinkLocalAddressing=no", "IPv6AcceptRA=no"]
            if host == self.topo.gateway:
                lines.append("IPForward=ipv4")
            if plan.default_gateway is not None and leg.zone == h.zone:
                lines.append(f"Gateway={plan.default_gateway}")
            for net, via in plan.routes:
                if ipaddress.IPv4Address(via) in self.topo.zones[leg.zone].cidr:
                    lines += ["", "[Route]", f"Destination={net}", f"Gateway={via}"]
            if self.topo.zones[leg.zone].management:
                # Static neighbours on the management LAN: its addresses are trusted by source, so none may be
                # claimed by another host (ARP spoofing); the production design does this on the switch.
                lines += ["", "[Link]", f"MACAddress={lab_mac(leg.address)}"]
                for other in self.topo.hosts.values():
                    peer = other.addresses.get(leg.zone)
                    if peer is not None and other.name != host:
                        lines += ["", "[Neighbor]", f"Address={peer}", f"LinkLayerAddress={lab_mac(peer)}"]
            (netdir / f"10-{leg.zone}.network").write_text("\n".join(lines) + "\n")
        ssh_dir = root / "home" / OPS_USER / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        pub = (self.out / "ssh/id_ed25519.pub").read_text()
        (ssh_dir / "authorized_keys").write_text(pub)
        uid, gid = _user_ids(root, OPS_USER)
        for p in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, uid, gid)
        (ssh_dir / "authorized_keys").chmod(0o600)

    def write_ssh_config(self) -> Path:
        ssh = self.out / "ssh"
        known, cfg = [], []
        for host in self.lab_hosts():
            addr = self.topo.access_address(host)
            pub = (self.host_dir(host) / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{host},{addr} {pub[0]} {pub[1]}")
            cfg += [f"Host {host} {addr}", f"  HostName {addr}", f"  HostKeyAlias {host}", ""]
        (ssh / "known_hosts").write_text("\n".join(known) + "\n")
        cfg += ["Host *", f"  User {OPS_USER}", f"  IdentityFile {ssh / 'id_ed25519'}", "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {ssh / 'known_hosts'}", "  StrictHostKeyChecking yes",
                "  ControlMaster auto", f"  ControlPath {RUN_DIR}/cm-%C", "  ControlPersist 120s",
                "  ConnectTimeout 5", "  LogLevel ERROR", ""]
        path = self.out / "ssh_config"
        path.write_text("\n".join(cfg))
        return path

    def wait_ssh(self, timeout: float = 60) -> dict[str, float]:
        t0 = time.monotonic()
        ready: dict[str, float] = {}
        pending = set(self.lab_hosts())
        cfg = str(self.out / "ssh_config")
        while pending and time.monotonic() - t0 < timeout:
            for host in sorted(pending):
                if not _port_open(str(self.topo.access_address(host)), 22):
                    continue
                if run("ssh", "-F", cfg, "-o", "BatchMode=yes", host, "true", check=False).returncode == 0:
                    ready[host] = time.monotonic() - t0
                    pending.discard(host)
            if pending:
                time.sleep(0.1)
        if pending:
            hints = ", ".join(f"{h} (log: {self.host_dir(h) / 'console.log'})" for h in sorted(pending))
            raise LabError(f"not SSH-ready after {timeout:.0f} s: {hints}")
        return ready

    def up(self) -> dict[str, float]:
        self.preflight()
        claim(self.repo)
        self.ensure_base()
        self.ensure_keys()
        t0 = time.monotonic()
        self.ensure_network()
        self.ensure_proxy()
        self.ensure_time_source()
        self.ensure_alert_receiver()
        started = [h for h in self.lab_hosts() if self.ensure_host(h)]
        log(f"hosts: started {', '.join(started) or 'none'}; "
            f"{len(self.lab_hosts()) - len(started)} already running")
        self.write_ssh_config()
        ready = self.wait_ssh()
        self._write_state()
        log(f"all {len(ready)} hosts SSH-ready {time.monotonic() - t0:.1f} s after start")
        return ready

    def _write_state(self) -> None:
        files.write_state(self.repo, self.topo.source,
                          {h: str(self.topo.access_address(h)) for h in self.lab_hosts()})

    # ---- teardown -----------------------------------------------------------------------------------
    def down(self) -> None:
        down(self.repo)

    def status(self) -> list[tuple[str, str, bool]]:
        return [(h, str(self.topo.access_address(h)), _alive(self.host_dir(h) / "pid")) for h in self.lab_hosts()]


def claim(repo: Path) -> None:
    """One lab per machine, and only its own checkout may bring it up again.

    The hosts' overlays keep the converged state of the checkout that built them: its SSH key, its Vault
    ceremony, its generated secrets. Adopting them from another checkout gives a converge that cannot unseal
    Vault and a "first converge" that is not one, so that is refused, naming the owner and the way out.
    """
    here = str(repo.resolve())
    owner_file = RUN_DIR / files.OWNER
    try:
        owner: str | None = owner_file.read_text().strip()
    except FileNotFoundError:
        owner = None
    hosts = _built_hosts()
    if owner != here and (owner is not None or hosts):
        built_by = (f"another checkout, {owner}" + ("" if Path(owner).is_dir() else " (that directory is gone)")
                    if owner else "a checkout that did not record itself (an older rampart)")
        raise LabError(f"a lab built by {built_by} is on this machine (hosts: {', '.join(hosts) or 'none'} "
                       f"in {RUN_DIR / 'hosts'}; owner recorded in {owner_file}). There is one lab per machine, "
                       f"and this checkout's keys and secrets do not fit its hosts. Remove it first: "
                       f"`make lab-down` (from any checkout; it removes any lab on this machine), then run this again.")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    owner_file.write_text(here + "\n")


# ---- teardown: from the lab's own state and names, no topology needed ------------------------------

def _host_dir(host: str) -> Path:
    return RUN_DIR / "hosts" / host


def _built_hosts() -> list[str]:
    """The hosts a lab on this machine built (running or not), from its run directory."""
    hosts_dir = RUN_DIR / "hosts"
    return sorted(p.name for p in hosts_dir.iterdir()) if hosts_dir.exists() else []


def _stop_host(host: str) -> None:
    d = _host_dir(host)
    pid = _read_pid(d / "pid")
    if pid and _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # nspawn turns SIGTERM into a clean poweroff
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    _kill_cgroup(f"{CGROUP}/{host}")
    root = d / "root"
    if os.path.ismount(root):
        # nspawn leaves a lock file per image directory (keyed by device and inode) in /run.
        st = root.stat()
        with contextlib.suppress(FileNotFoundError):
            (Path("/run/systemd/nspawn/locks") / f"inode-{st.st_dev}:{st.st_ino}").unlink()
        run("umount", str(root), check=False)
        if os.path.ismount(root):
            run("umount", "-l", str(root), check=False)
    for link in json.loads(run("ip", "-j", "link", "show").stdout or "[]"):
        if link.get("ifname", "").startswith(f"{VETH_PREFIX}{host}-"):
            run("ip", "link", "del", link["ifname"], check=False)
    for sub in ("unix-export", "propagate", "incoming"):
        shutil.rmtree(Path("/run/systemd/nspawn") / sub / host, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (d / "pid").unlink()


def down(repo: Path) -> None:
    """Remove everything a lab (any topology, an interrupted run included) created on this machine: hosts
    found under the lab's run directory and its cgroup, links and routes found by the lab's names."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root to tear down: run `sudo make lab-down`")
    known = set(_built_hosts()) | set((files.read_state(repo) or {}).get("hosts", {}))
    for host in sorted(known):
        _stop_host(host)
        log(f"stopped {host}")
    _kill_cgroup(CGROUP)
    for name in LAB_SERVICES:
        pid = _read_pid(RUN_DIR / name / "pid")
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    # Sweep by name, so links left by an interrupted run (or another topology) go too.
    for link in json.loads(run("ip", "-j", "link", "show").stdout or "[]"):
        name = link.get("ifname", "")
        if name.startswith((BRIDGE_PREFIX, VETH_PREFIX)):
            run("ip", "link", "del", name, check=False)
    run("nft", "delete", "table", "inet", NFT_TABLE, check=False)
    run("ip", "route", "flush", "proto", LAB_ROUTE_PROTO, check=False)
    saved = RUN_DIR / "bridge-nf.json"
    if saved.exists():
        for family, value in json.loads(saved.read_text()).items():
            with contextlib.suppress(OSError):
                Path(f"/proc/sys/net/bridge/bridge-nf-call-{family}").write_text(f"{value}\n")
    for m in _mounts_under(RUN_DIR):
        run("umount", "-l", m, check=False)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    shutil.rmtree(repo / files.LAB_DIR, ignore_errors=True)
    for sub in ("locks", "propagate", "unix-export", "incoming", ""):  # nspawn's own dirs, once empty
        with contextlib.suppress(OSError):
            (Path("/run/systemd/nspawn") / sub).rmdir()
    log("lab removed (the base image and package cache stay in /var/cache/rampart)")


# ---- small helpers --------------------------------------------------------------------------------

def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt sources name (the only one reachable here)."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "URIs:" and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1].rstrip("/")
            if words[0] == "deb":
                url = next((w for w in words[1:] if "://" in w), "")
                if url.rstrip("/").endswith("/debian"):
                    return url.rstrip("/")
    return "http://deb.debian.org/debian"


def _user_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise LabError(f"base image has no user {user!r}: remove {CACHE_DIR} to rebuild it")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own, unreaped child) is not alive.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _alive(pidfile: Path) -> bool:
    pid = _read_pid(pidfile)
    return bool(pid) and _pid_alive(pid)


def _kill_cgroup(rel: str) -> None:
    """Kill every process left in a lab cgroup (both hierarchies), then remove the cgroups depth-first."""
    for hierarchy in ("systemd", "unified"):
        top = Path("/sys/fs/cgroup") / hierarchy / rel
        if not top.exists():
            continue
        for _ in range(50):
            procs = [int(p) for f in top.rglob("cgroup.procs") for p in f.read_text().split()]
            if not procs:
                break
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _mounts_under(path: Path) -> list[str]:
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((m for m in mounts if m.startswith(str(path) + "/")), key=len, reverse=True)


def _port_open(addr: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((addr, port)) == 0


def _wait_port(addr: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(addr, port):
            return
        time.sleep(0.1)
    raise LabError(f"{what} did not start listening on {addr}:{port} within {timeout:.0f} s")
