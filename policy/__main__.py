"""rampart policy pack: the Docker backend's segmentation and hardening invariants, enforced at preview.

    pulumi preview --policy-pack policy --policy-pack-config policy/config.lab.json

The checks themselves are pure functions in ``rampart.pulumi.policy_checks`` (unit-tested in tests/pulumi),
imported from the installed rampart package (policy/requirements.txt installs it); this file only
binds them to pulumi-policy. With a ``topology`` configured, networks and attachments are compared with the
topology file itself, not only with the labels the program wrote.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)
from rampart.pulumi import policy_checks as checks

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TOPOLOGY_SCHEMA = PolicyConfigSchema(properties={
    "topology": {"type": "string", "default": "",
                 "description": "topology file (relative to the repository root); empty: trust labels"},
})


@cache
def _topology(path: str):
    if not path:
        return None
    from rampart.topology import load

    p = Path(path)
    return load(p if p.is_absolute() else REPO / p)


def _container_policy(name: str, check, description: str) -> ResourceValidationPolicy:
    def validate(args, report_violation):
        if args.resource_type == checks.CONTAINER:
            for message in check(args.props):
                report_violation(message, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate)


def _ports(args, report_violation):
    if args.resource_type != checks.CONTAINER:
        return
    topo = _topology(args.get_config().get("topology", ""))
    allowed = checks.DEFAULT_ALLOWED_PORTS
    if topo is not None:
        host = checks.labels_of(args.props).get("rampart.host")
        wg = topo.services.get("wireguard")
        allowed = {(wg.port, wg.proto)} if wg is not None and host in wg.hosts else set()
    for message in checks.check_published_ports(args.props, allowed):
        report_violation(message, None)


def _networks(args, report_violation):
    if args.resource_type != checks.NETWORK:
        return
    topo = _topology(args.get_config().get("topology", ""))
    external = None if topo is None else [z.name for z in topo.zones.values() if z.external]
    for message in checks.check_network(args.props, external):
        report_violation(message, None)


def _segmentation(args, report_violation):
    topo = _topology(args.get_config().get("topology", ""))
    pairs = [(r.resource_type, r.props) for r in args.resources]
    for message in checks.check_segmentation(pairs, topo):
        report_violation(message, None)


PolicyPack(
    name="rampart",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        _container_policy("rampart-no-privileged", checks.check_not_privileged,
                          "Host containers are never privileged and share no host namespace."),
        _container_policy("rampart-capabilities", checks.check_capabilities,
                          "Containers drop ALL capabilities and add back only what systemd and roles need."),
        ResourceValidationPolicy(
            name="rampart-published-ports",
            description="Nothing is published except the WireGuard UDP port on the gateway.",
            validate=_ports, config_schema=TOPOLOGY_SCHEMA),
        _container_policy("rampart-no-secrets", checks.check_no_secrets,
                          "No secrets in container environment, labels or uploaded files."),
        _container_policy("rampart-mounts", checks.check_mounts,
                          "No host paths, Docker socket or whole cgroup tree are mounted into hosts."),
        _container_policy("rampart-operability", checks.check_operability,
                          "Every host has a restart policy and a healthcheck."),
        ResourceValidationPolicy(
            name="rampart-internal-networks",
            description="Zone networks are internal unless the zone is external, with fixed subnets.",
            validate=_networks, config_schema=TOPOLOGY_SCHEMA),
        StackValidationPolicy(
            name="rampart-segmentation",
            description="Each container is only on its own zones' networks, at its topology address.",
            validate=_segmentation, config_schema=TOPOLOGY_SCHEMA),
    ],
)
