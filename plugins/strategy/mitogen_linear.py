"""Ansible's linear strategy run over Mitogen: no-op converges are ~2x faster than plain SSH with
pipelining (both measured by `make bench`). Mitogen ships its strategies inside its package; this file
makes them loadable without pointing ansible.cfg at a path inside the virtualenv.

Two changes for the controller's CPU, which is what a no-op converge spends (lab, 2 CPUs, site.yml no-op,
runs interleaved on one lab):
- Mitogen's CPU pinning is off. With fewer than four CPUs it puts its connection multiplexer on CPU 0 and the
  controller together with every worker on CPU 1, so the work of all hosts queues on one core: 119 s pinned,
  96-98 s not.
- A worker (forked for one task on one host, then gone) runs without the cyclic garbage collector. A
  collection there walks the objects it shares with the controller and copies their pages: 96-98 -> 89-90 s."""

import gc

import ansible.executor.process.worker
import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()  # the base policy pins nothing

_worker_run = ansible.executor.process.worker.WorkerProcess._run


def _worker_run_without_gc(self):
    gc.disable()
    return _worker_run(self)


ansible.executor.process.worker.WorkerProcess._run = _worker_run_without_gc

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    pass
