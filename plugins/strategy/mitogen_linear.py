"""Ansible's linear strategy run over Mitogen: no-op converges are ~2x faster than plain SSH with
pipelining (both measured by `make bench`). Mitogen ships its strategies inside its package; this file
makes them loadable without pointing ansible.cfg at a path inside the virtualenv."""

import ansible_mitogen.loaders
import ansible_mitogen.strategy

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    pass
