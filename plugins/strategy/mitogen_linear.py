"""Ansible's linear strategy run over Mitogen: no-op converges are ~2x faster than plain SSH with
pipelining (both measured by `make bench`). Mitogen ships its strategies inside its package; this file
makes them loadable without pointing ansible.cfg at a path inside the virtualenv.

Mitogen's CPU pinning is switched off. On a machine with fewer than four CPUs it puts its connection
multiplexer on CPU 0 and the controller together with every worker on CPU 1, so the per-task work of all
hosts queues on one core while the other idles; unpinned, the lab's no-op converge on this 2-CPU machine
went from 134 s to 112 s (profile_tasks, same lab, one run each)."""

import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()  # the base policy pins nothing

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    pass
