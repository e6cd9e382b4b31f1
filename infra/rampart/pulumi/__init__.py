"""The Pulumi (Docker) backend: the topology as Docker networks and systemd host containers.

- :mod:`rampart.pulumi.settings` reads and checks the stack configuration (pure, no Pulumi engine needed).
- :mod:`rampart.pulumi.plan` turns a topology + settings into what Docker must create (pure).
- :mod:`rampart.pulumi.program` declares the Pulumi resources from that plan.
- :mod:`rampart.pulumi.inventory` turns ``pulumi stack output --json`` into an Ansible inventory.
"""
