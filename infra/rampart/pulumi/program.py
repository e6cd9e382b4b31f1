"""The Pulumi program: one component per zone (its Docker network) and per host (its container and volumes).

``infra/__main__.py`` calls :func:`main`. Everything about *what* to create comes from
:mod:`rampart.pulumi.plan`; this module only maps that plan onto pulumi-docker resources, so the resource
graph reads like the topology::

    rampart:docker:Zone  <zone>   → docker:Network
    rampart:docker:Host  <host>   → docker:Volume (one per data directory), docker:Container
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker as docker

from rampart.pulumi import plan as planning
from rampart.pulumi import settings as config
from rampart.topology import TopologyError, load

# The topology names zones and hosts; these are the Pulumi type tokens of their components.
ZONE_TYPE = "rampart:docker:Zone"
HOST_TYPE = "rampart:docker:Host"
CONTAINER_SSH_KEYS = "/etc/ssh/authorized_keys"  # the image points sshd's AuthorizedKeysFile here


def _labels(values: dict[str, str], cls: type) -> list[Any]:
    return [cls(label=k, value=v) for k, v in sorted(values.items())]


class ZoneNetwork(pulumi.ComponentResource):
    """One zone of the topology: a bridge network with the zone's subnet and fixed IPAM gateway."""

    def __init__(self, net: planning.NetworkPlan, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(ZONE_TYPE, net.zone, None, opts)
        options = {}
        if not net.host_leg:
            # The Docker host stays off this zone: no bridge address, so no path around the gateway.
            options["com.docker.network.bridge.inhibit_ipv4"] = "true"
        self.network = docker.Network(
            net.zone,
            name=net.name,
            driver="bridge",
            internal=net.internal,
            attachable=False,
            ipv6=False,
            ipam_configs=[docker.NetworkIpamConfigArgs(subnet=str(net.subnet),
                                                       gateway=str(net.ipam_gateway))],
            options=options,
            labels=_labels({**labels, "rampart.zone": net.zone,
                            "rampart.external": str(not net.internal).lower()}, docker.NetworkLabelArgs),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"name": self.network.name})


class HostContainer(pulumi.ComponentResource):
    """One host of the topology: a systemd container with a static address on each of its zones."""

    def __init__(self, c: planning.ContainerPlan, plan: planning.Plan, image: pulumi.Input[str],
                 networks: dict[str, docker.Network], opts: pulumi.ResourceOptions | None = None):
        super().__init__(HOST_TYPE, c.host, None, opts)
        s = plan.settings
        labels = {**plan.labels, "rampart.host": c.host, "rampart.zones": ",".join(c.zones),
                  "rampart.roles": ",".join(c.roles)}
        volumes = []
        for d in c.data_dirs:
            key = planning.slug(d)
            vol = docker.Volume(
                f"{c.host}-{key}",
                name=f"{c.name}-{key}",
                labels=_labels({**labels, "rampart.path": d}, docker.VolumeLabelArgs),
                # Data outlives `pulumi destroy` unless the stack says otherwise (rampart:keepData).
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=s.keep_data),
            )
            volumes.append(docker.ContainerVolumeArgs(volume_name=vol.name, container_path=d))
        if s.systemd_cgroup == "delegate":
            # Docker mounts cgroupfs read-only in unprivileged containers, and systemd must create cgroups.
            # Hand each container its own sub-tree of the host hierarchy instead of the whole of it.
            volumes.append(docker.ContainerVolumeArgs(
                host_path=f"{planning.CGROUP_DELEGATION_ROOT}/rampart-{plan.stack}/{c.host}",
                container_path=planning.CGROUP_DELEGATION_ROOT, read_only=False))
        self.container = docker.Container(
            c.host,
            name=c.name,
            image=image,
            hostname=c.host,
            domainname=plan.topology.domain,
            # systemd is PID 1 (the image's CMD); it needs no init shim, and halts cleanly on SIGRTMIN+3.
            init=False,
            stop_signal="SIGRTMIN+3",
            stop_timeout=30,
            restart=s.restart_policy,
            must_run=True,
            privileged=False,
            runtime=s.container_runtime,
            # delegate: the host namespace, so the bind-mounted sub-tree is where systemd's cgroup really
            # is; runtime: the runtime provides a private, writable cgroupfs.
            cgroupns_mode="host" if s.systemd_cgroup == "delegate" else "private",
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=list(c.capabilities)),
            devices=[docker.ContainerDeviceArgs(host_path=d, container_path=d, permissions="rwm")
                     for d in c.devices],
            sysctls=c.sysctls,
            tmpfs=planning.TMPFS,
            # systemd's container detection; the only environment variable, and never a secret.
            envs=["container=docker"],
            networks_advanced=[
                docker.ContainerNetworksAdvancedArgs(name=networks[a.zone].name, ipv4_address=str(a.address))
                for a in c.attachments
            ],
            ports=[docker.ContainerPortArgs(internal=p.port, external=p.port, protocol=p.proto, ip=p.bind)
                   for p in c.ports],
            volumes=volumes,
            uploads=[docker.ContainerUploadArgs(file=f"{CONTAINER_SSH_KEYS}/{s.ssh_user}",
                                                content=s.ssh_public_key + "\n", permissions="0644")],
            healthcheck=docker.ContainerHealthcheckArgs(
                # Healthy = systemd is up and the way in (sshd) is running.
                tests=["CMD", "systemctl", "is-active", "--quiet", "ssh.service"],
                interval="30s", timeout="5s", retries=3, start_period="60s",
            ),
            labels=_labels(labels, docker.ContainerLabelArgs),
            log_driver="json-file",
            log_opts={"max-size": "10m", "max-file": "3"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"name": self.container.name})


def project_root() -> Path:
    """Where Pulumi.yaml is: relative config paths are taken from there, whatever the working directory."""
    root = pulumi.get_root_directory() if hasattr(pulumi, "get_root_directory") else None
    if root and (Path(root) / "Pulumi.yaml").is_file():
        return Path(root)
    here = Path.cwd()
    return next((p for p in (here, *here.parents) if (p / "Pulumi.yaml").is_file()), here)


def stack_config() -> dict[str, Any]:
    """Every ``rampart:*`` key the stack sets, namespace stripped (so unknown keys can be reported)."""
    from pulumi.runtime import config as runtime_config

    merged: dict[str, Any] = {}
    merged.update(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    prefix = f"{config.NAMESPACE}:"
    out = {}
    for key, value in merged.items():
        if key.startswith(prefix):
            name = key[len(prefix):]
            # Older engines pass "rampart:config:key"; newer ones "rampart:key".
            out[name.removeprefix("config:")] = value
    return out


def build(settings: config.Settings, stack: str,
          root: Path = Path(".")) -> tuple[planning.Plan, dict[str, Any]]:
    """Declare every resource for ``settings``; return the plan and the stack outputs (plain values)."""
    try:
        topo = load(settings.topology)
        plan = planning.build(topo, settings, stack, root)
    except (TopologyError, planning.PlanError) as exc:
        raise pulumi.RunError(str(exc)) from None

    provider = docker.Provider(
        "docker",
        host=settings.docker_host,
        ssh_opts=list(settings.docker_ssh_opts) or None,
    )
    provided = pulumi.ResourceOptions(provider=provider)
    under = pulumi.ResourceOptions(providers=[provider])

    if settings.image.build:
        built = docker.Image(
            "host-image",
            image_name=settings.image.name,
            build=docker.DockerBuildArgs(
                context=str(settings.image.context),
                dockerfile=str(settings.image.context / "Dockerfile"),
                platform=settings.image.platform,
                args={"SSH_USER": settings.ssh_user},
            ),
            # The image stays on the Docker host that runs the containers; nothing is pushed anywhere.
            skip_push=True,
            opts=provided,
        )
        image: pulumi.Input[str] = built.image_name
    else:
        image = docker.RemoteImage("host-image", name=settings.image.name, keep_locally=True,
                                   opts=provided).image_id

    zones = {z: ZoneNetwork(n, plan.labels, opts=under) for z, n in plan.networks.items()}
    networks = {z: comp.network for z, comp in zones.items()}
    for c in plan.containers.values():
        HostContainer(c, plan, image, networks, opts=under)

    outputs = plan.outputs()
    for key, value in outputs.items():
        pulumi.export(key, value)
    return plan, outputs


def main() -> None:
    try:
        settings = config.parse(stack_config(), project_root())
    except config.ConfigError as exc:
        # RunError: the engine prints the message alone, without a Python traceback.
        how = f"pulumi config set --path {exc.key}" if "." in exc.key or "[" in exc.key \
            else f"pulumi config set {exc.key}"
        raise pulumi.RunError(f"{exc} (fix with: {how} ...)") from None
    build(settings, pulumi.get_stack(), project_root())
