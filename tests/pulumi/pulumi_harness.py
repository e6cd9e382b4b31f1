"""Run the Pulumi program against Pulumi's unit-test mocks (no CLI, no engine, no Docker) and record every
resource registration and the stack's exported outputs, for the tests to inspect."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks

ROOT = Path(__file__).resolve().parents[2]

LAB_TOPOLOGY = ROOT / "inventory" / "lab" / "topology.yml"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnlyFakeKeyForTestsOnly0 ci@rampart"
STACK = "lab"


@dataclass
class Registered:
    typ: str
    name: str
    urn: str
    custom: bool
    inputs: dict[str, Any]

    @property
    def parent_type(self) -> str | None:
        """The type of the component this resource was declared in (from the URN's type chain)."""
        chain = self.urn.split("::")[2].split("$")
        return chain[-2] if len(chain) > 1 else None


class RecordingMocks(pulumi.runtime.Mocks):
    """Echo inputs back as state (what a provider would do for these resources) and remember them."""

    def __init__(self) -> None:
        self.registered: list[pulumi_mocks.MockResourceArgs] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        self.registered.append(args)
        state = dict(args.inputs)
        if args.typ == "docker:index/remoteImage:RemoteImage":
            state["imageId"] = "sha256:" + "0" * 64
        return [f"{args.name}-id", state]

    def call(self, args: pulumi_mocks.MockCallArgs):
        return {}


def exported() -> dict[str, Any]:
    """The stack outputs as `pulumi stack output --json` prints them (the engine serialises them to JSON)."""
    root = pulumi.runtime.get_root_resource()
    return json.loads(json.dumps(root.outputs))


@dataclass
class Run:
    resources: list[Registered]
    outputs: dict[str, Any]
    plan: Any
    topology: Any

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    @property
    def containers(self) -> dict[str, Registered]:
        return {r.name: r for r in self.of_type("docker:index/container:Container")}

    @property
    def networks(self) -> dict[str, Registered]:
        return {r.name: r for r in self.of_type("docker:index/network:Network")}


def config_for(tmp: Path, **overrides: Any) -> dict[str, Any]:
    key = tmp / "id_test.pub"
    key.write_text(PUBLIC_KEY + "\n")
    raw: dict[str, Any] = {
        "topology": str(LAB_TOPOLOGY),
        "dockerHost": "unix:///var/run/docker.sock",
        "sshPublicKeyFile": str(key),
    }
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not None}


def run_program(raw_config: dict[str, Any], stack: str = STACK, via_main: bool = False) -> Run:
    """Run the program under fresh mocks. ``via_main`` goes through the engine's config (set_all_config)."""
    from rampart.pulumi import program, settings
    from rampart.topology import load

    mocks = RecordingMocks()
    monitor = pulumi_mocks.MockMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="rampart", stack=stack, preview=False, monitor=monitor)
    root = pulumi.runtime.get_root_resource()
    root.outputs.clear()  # one root stack lives across runs; start each run with no exports
    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def declare():
        if via_main:
            pulumi.runtime.set_all_config({f"rampart:{k}": str(v) for k, v in raw_config.items()})
            try:
                program.main()
            finally:
                pulumi.runtime.set_all_config({})
        else:
            plan, outputs = program.build(settings.parse(raw_config, ROOT), stack, ROOT)
            result.update(plan=plan, outputs=outputs)

    declare()
    outputs = exported()
    by_key = {(r.typ, r.name): r for r in mocks.registered}
    resources = []
    for urn in monitor.resources:
        typ, name = urn.split("::")[2].split("$")[-1], urn.split("::")[-1]
        args = by_key[(typ, name)]
        resources.append(Registered(typ, name, urn, bool(args.custom), dict(args.inputs)))
    return Run(resources, outputs, result.get("plan"), load(LAB_TOPOLOGY))
