"""SSH server controls (ids from dev-sec ssh-baseline `sshd-*`, plus rampart's own), checked against the
effective configuration (`sshd -T`), not the file text."""

import re

from compliance_core import Facts, control, describe, is_wildcard, mode_at_most

CIPHERS = {"chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com"}
KEX = {"sntrup761x25519-sha512@openssh.com", "curve25519-sha256", "curve25519-sha256@libssh.org"}
MACS = {"hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"}
HOSTKEY_ALGS = {"ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-512", "rsa-sha2-512-cert-v01@openssh.com",
                "rsa-sha2-256", "rsa-sha2-256-cert-v01@openssh.com"}


def _sshd_ok(facts: Facts) -> None:
    assert facts.data["sshd"]["rc"] == 0, f"sshd -T failed: {facts.data['sshd']['out'][-300:]}"


def _subset(cid: str, title: str, key: str, allowed: set[str]) -> None:
    @control(cid, title)
    def check(facts: Facts) -> None:
        _sshd_ok(facts)
        offered = set((facts.sshd_value(key) or "").split(","))
        assert offered and offered <= allowed, f"{key} offers {sorted(offered - allowed)} beyond {sorted(allowed)}"


def _equals(cid: str, title: str, key: str, *allowed: str) -> None:
    @control(cid, title)
    def check(facts: Facts) -> None:
        _sshd_ok(facts)
        value = facts.sshd_value(key)
        assert value in allowed, f"{key} is {value!r}, want {' or '.join(allowed)}"


_subset("sshd-01", "Only AEAD ciphers (chacha20-poly1305, AES-GCM)", "ciphers", CIPHERS)
_subset("sshd-02", "Only X25519 / sntrup761 key exchange", "kexalgorithms", KEX)
_subset("sshd-03", "Only encrypt-then-MAC SHA-2 MACs", "macs", MACS)


@control("sshd-04", "/etc/ssh is root:root and writable only by root", stat=["/etc/ssh"])
def ssh_dir(facts: Facts) -> None:
    st = facts.stat("/etc/ssh")
    assert st and st["dir"] and (st["user"], st["group"]) == ("root", "root") and mode_at_most(st, 0o755), \
        f"/etc/ssh is {describe(st)}"


@control("sshd-05", "sshd_config is root:root 0600", stat=["/etc/ssh/sshd_config"])
def sshd_config_mode(facts: Facts) -> None:
    st = facts.stat("/etc/ssh/sshd_config")
    assert st and (st["user"], st["group"]) == ("root", "root") and mode_at_most(st, 0o600), \
        f"sshd_config is {describe(st)}"


_equals("sshd-06", "No root login", "permitrootlogin", "no")


@control("sshd-07", "The port is set explicitly (22)")
def port(facts: Facts) -> None:
    _sshd_ok(facts)
    assert facts.sshd.get("port") == ["22"], f"port {facts.sshd.get('port')}"


_equals("sshd-08", "Address family limited to IPv4 (the platform is IPv4-only)", "addressfamily", "inet")


@control("sshd-09", "ListenAddress set: the management (or home-zone) address, plus loopback")
def listen_address(facts: Facts) -> None:
    _sshd_ok(facts)
    addresses = {v.rsplit(":", 1)[0].strip("[]") for v in facts.sshd.get("listenaddress", [])}
    assert not any(is_wildcard(a) for a in addresses), f"listens on all addresses: {addresses}"
    extra = {a for a in addresses if a not in ("127.0.0.1", facts.access_address)}
    assert facts.access_address in addresses, f"{facts.access_address} not in ListenAddress {sorted(addresses)}"
    assert not extra, f"unexpected ListenAddress {sorted(extra)}"


_equals("sshd-11", "StrictModes on", "strictmodes", "yes")
_equals("sshd-12", "Logs to the AUTH facility", "syslogfacility", "AUTH")
_equals("sshd-13", "LogLevel VERBOSE (key fingerprints logged)", "loglevel", "VERBOSE")


@control("sshd-14", "Host keys: Ed25519 (and RSA if present) only, no DSA/ECDSA")
def host_keys(facts: Facts) -> None:
    _sshd_ok(facts)
    keys = facts.sshd.get("hostkey", [])
    assert keys, "no HostKey"
    bad = [k for k in keys if k not in ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key")]
    assert not bad, f"unexpected host keys {bad}"


_equals("sshd-17", "No user environment processing", "permituserenvironment", "no")
_equals("sshd-18", "LoginGraceTime 30 s", "logingracetime", "30")


@control("sshd-19", "MaxAuthTries at most 3")
def max_auth_tries(facts: Facts) -> None:
    _sshd_ok(facts)
    assert int(facts.sshd_value("maxauthtries") or 99) <= 3, f"MaxAuthTries {facts.sshd_value('maxauthtries')}"


_equals("sshd-20", "MaxSessions 10", "maxsessions", "10")
_equals("sshd-21", "MaxStartups 10:30:100", "maxstartups", "10:30:100")
_equals("sshd-22", "Public key authentication on", "pubkeyauthentication", "yes")
_equals("sshd-23", "Ignore .rhosts", "ignorerhosts", "yes")
_equals("sshd-24", "Ignore users' known_hosts for authentication", "ignoreuserknownhosts", "yes")
_equals("sshd-25", "No host-based authentication", "hostbasedauthentication", "no")
_equals("sshd-27", "No password authentication", "passwordauthentication", "no")
_equals("sshd-28", "No empty passwords", "permitemptypasswords", "no")
_equals("sshd-29", "No keyboard-interactive (challenge-response) authentication",
        "kbdinteractiveauthentication", "no")
_equals("sshd-30", "No Kerberos authentication", "kerberosauthentication", "no")
_equals("sshd-31", "No Kerberos-or-local-password fallback", "kerberosorlocalpasswd", "no")
_equals("sshd-32", "Kerberos tickets cleaned up at logout", "kerberosticketcleanup", "yes")
_equals("sshd-33", "No GSSAPI authentication", "gssapiauthentication", "no")
_equals("sshd-34", "GSSAPI credentials cleaned up at logout", "gssapicleanupcredentials", "yes")
_equals("sshd-35", "No spoofable TCP keepalives (ClientAlive instead)", "tcpkeepalive", "no")
_equals("sshd-36", "ClientAliveInterval 300 s", "clientaliveinterval", "300")
_equals("sshd-37", "ClientAliveCountMax 3", "clientalivecountmax", "3")
_equals("sshd-38", "No tunnels", "permittunnel", "no")
_equals("sshd-39", "No TCP forwarding", "allowtcpforwarding", "no")
_equals("sshd-40", "No agent forwarding", "allowagentforwarding", "no")
_equals("sshd-41", "No gateway ports", "gatewayports", "no")
_equals("sshd-42", "No X11 forwarding", "x11forwarding", "no")
_equals("sshd-43", "X11 bound to localhost (if ever enabled)", "x11uselocalhost", "yes")
_equals("sshd-44", "sshd does not print the motd", "printmotd", "no")
_equals("sshd-45", "sshd does not print the last login", "printlastlog", "no")
_equals("sshd-46", "No pre-authentication banner that could reveal the system", "banner", "none")


@control("sshd-47", "No Debian version in the protocol banner", read=["/etc/ssh/sshd_config"])
def debian_banner(facts: Facts) -> None:
    # `sshd -T` does not print this Debian-specific option: read the (single, include-free) file instead.
    text = (facts.file("/etc/ssh/sshd_config") or "").lower()
    assert re.search(r"^\s*debianbanner\s+no\s*$", text, re.M), "DebianBanner no missing"


@control("sshd-48", "No DH moduli shorter than 2048 bits", read=["/etc/ssh/moduli"])
def moduli(facts: Facts) -> None:
    weak = [line.split()[4] for line in (facts.file("/etc/ssh/moduli") or "").splitlines()
            if not line.startswith("#") and len(line.split()) >= 7 and int(line.split()[4]) < 2047]
    assert not weak, f"{len(weak)} weak moduli"


# --- rampart's own SSH controls ------------------------------------------------------------------------------

_subset("rampart-ssh-01", "Only Ed25519/RSA-SHA2 host key signatures", "hostkeyalgorithms", HOSTKEY_ALGS)
_equals("rampart-ssh-02", "Keys are the only authentication method", "authenticationmethods", "publickey")
_equals("rampart-ssh-03", "No Unix-socket forwarding", "allowstreamlocalforwarding", "no")
_equals("rampart-ssh-04", "No ~/.ssh/rc", "permituserrc", "no")
_equals("rampart-ssh-05", "No compression", "compression", "no")
_equals("rampart-ssh-06", "No reverse DNS lookups", "usedns", "no")
_equals("rampart-ssh-07", "sftp served in-process (internal-sftp)", "subsystem",
        "sftp internal-sftp -f AUTHPRIV -l INFO")


@control("rampart-ssh-08", "Only the SSH login group may log in, and the automation user is in it")
def allow_groups(facts: Facts) -> None:
    _sshd_ok(facts)
    groups = (facts.sshd_value("allowgroups") or "").split()
    assert groups == ["sshusers"], f"AllowGroups {groups}"
    members = facts.data["groups"].get("sshusers", [])
    assert "ops" in members, f"ops not in sshusers ({members})"
    assert not facts.sshd.get("allowusers"), "AllowUsers set as well"


@control("rampart-ssh-09", "Host private keys root:root 0600, public keys 0644")
def host_key_modes(facts: Facts) -> None:
    bad = []
    for path, st in facts.data["stat"].items():
        if not path.startswith("/etc/ssh/ssh_host_") or st is None:
            continue
        limit = 0o644 if path.endswith(".pub") else 0o600
        if not ((st["user"], st["group"]) == ("root", "root") and mode_at_most(st, limit)):
            bad.append(f"{path} {describe(st)}")
    assert not bad, str(bad)


@control("rampart-ssh-10", "sshd listens only where ListenAddress says (management address and loopback)")
def sshd_sockets(facts: Facts) -> None:
    on = {(a, p) for proto, a, p in facts.listening if proto == "tcp" and p == 22}
    assert on, "nothing listens on tcp/22"
    bad = {a for a, _ in on if a not in ("127.0.0.1", facts.access_address)}
    assert not bad, f"sshd listens on {sorted(bad)}"
    assert (facts.access_address, 22) in on, f"sshd not listening on {facts.access_address}:22"


@control("rampart-ssh-11", "The sshd configuration is complete in one file (no drop-in includes)",
         read=["/etc/ssh/sshd_config"])
def no_include(facts: Facts) -> None:
    text = facts.file("/etc/ssh/sshd_config") or ""
    assert not any(line.strip().lower().startswith("include") for line in text.splitlines()), "Include present"


@control("rampart-ssh-12", "RekeyLimit set")
def rekey(facts: Facts) -> None:
    _sshd_ok(facts)
    value = facts.sshd_value("rekeylimit") or ""
    assert value and value.split()[0] != "0", f"RekeyLimit {value!r}"


# --- SSH client (ids from dev-sec ssh-baseline `ssh-*`): effective settings for root's outbound connections,
# as `ssh -G` resolves them (backups' sftp runs as root). Obsolete SSH-1 options (ssh-04, -14, -15, -21) and
# the RHEL crypto policy (ssh-22) do not apply to OpenSSH 9 on Debian.

def ssh_client(facts: Facts) -> dict[str, str]:
    """`ssh -G` as {lower-case keyword: value} (the client prints each setting once)."""
    result = facts.data["ssh_client"]
    assert result["rc"] == 0, f"ssh -G failed: {(result['err'] or result['out']).strip()[-300:]}"
    return {k: v.strip() for k, _, v in (line.partition(" ") for line in result["out"].splitlines()) if k}


def _client_equals(cid: str, title: str, key: str, *allowed: str) -> None:
    @control(cid, title)
    def check(facts: Facts) -> None:
        value = ssh_client(facts).get(key)
        assert value in allowed, f"ssh client {key} is {value!r}, want {' or '.join(allowed)}"


def _client_subset(cid: str, title: str, key: str, allowed: set[str]) -> None:
    @control(cid, title)
    def check(facts: Facts) -> None:
        offered = set((ssh_client(facts).get(key) or "").split(","))
        assert offered and offered <= allowed, \
            f"ssh client {key} offers {sorted(offered - allowed)} beyond {sorted(allowed)}"


CLIENT_FILES = {"/etc/ssh/ssh_config": 0o644, "/etc/ssh/ssh_config.d": 0o755,
                "/etc/ssh/ssh_config.d/10-rampart-hardening.conf": 0o644}


@control("ssh-01", "ssh_config, its drop-in directory and rampart's drop-in are root:root, writable only by root",
         stat=list(CLIENT_FILES))
def client_config_files(facts: Facts) -> None:
    bad = [f"{path} {describe(facts.stat(path))}" for path, limit in CLIENT_FILES.items()
           if not (facts.stat(path) and (facts.stat(path)["user"], facts.stat(path)["group"]) == ("root", "root")
                   and mode_at_most(facts.stat(path), limit))]
    assert not bad, f"want root:root, at most 0644 (0755 for the directory): {bad}"


_client_equals("ssh-02", "Client: IPv4 only (the platform is IPv4-only)", "addressfamily", "inet")
_client_equals("ssh-03", "Client: port 22", "port", "22")
_client_equals("ssh-05", "Client: batch mode not forced", "batchmode", "no")
_client_equals("ssh-06", "Client: host IPs checked against known_hosts", "checkhostip", "yes")
_client_equals("ssh-07", "Client: unknown or changed host keys refused", "stricthostkeychecking", "true")
_client_subset("ssh-08", "Client: only AEAD ciphers", "ciphers", CIPHERS)
_client_subset("ssh-09", "Client: only X25519 / sntrup761 key exchange", "kexalgorithms", KEX)
_client_subset("ssh-10", "Client: only encrypt-then-MAC SHA-2 MACs", "macs", MACS)
_client_equals("ssh-11", "Client: no agent forwarding", "forwardagent", "no")
_client_equals("ssh-12", "Client: no X11 forwarding", "forwardx11", "no")
_client_equals("ssh-13", "Client: no host-based authentication", "hostbasedauthentication", "no")
_client_equals("ssh-16", "Client: no password authentication", "passwordauthentication", "no")
_client_equals("ssh-17", "Client: no GSSAPI authentication", "gssapiauthentication", "no")
_client_equals("ssh-18", "Client: no GSSAPI credential delegation", "gssapidelegatecredentials", "no")
_client_equals("ssh-19", "Client: no tunnels", "tunnel", "false")
_client_equals("ssh-20", "Client: no local commands", "permitlocalcommand", "no")
_client_equals("rampart-ssh-13", "Client: known_hosts names hashed", "hashknownhosts", "yes")


@control("rampart-ssh-14", "Client: only Ed25519/RSA-SHA2 host key signatures, Ed25519 accepted")
def client_host_key_algorithms(facts: Facts) -> None:
    offered = (ssh_client(facts).get("hostkeyalgorithms") or "").split(",")
    assert "ssh-ed25519" in offered, f"ssh-ed25519 not accepted: {offered}"
    assert set(offered) <= HOSTKEY_ALGS, f"hostkeyalgorithms offers {sorted(set(offered) - HOSTKEY_ALGS)}"
