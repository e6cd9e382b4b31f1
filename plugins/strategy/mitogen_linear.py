"""Ansible's linear strategy run over Mitogen: no-op converges are ~2x faster than plain SSH with
pipelining (both measured by `make bench`). Mitogen ships its strategies inside its package; this file
makes them loadable without pointing ansible.cfg at a path inside the virtualenv.

Two changes for the controller's CPU, which is what a no-op converge spends (lab, 2 CPUs, site.yml no-op,
runs interleaved on one lab):
- Mitogen's CPU pinning is off. With fewer than four CPUs it puts its connection multiplexer on CPU 0 and the
  controller together with every worker on CPU 1, so the work of all hosts queues on one core: 119 s pinned,
  96-98 s not.
- A worker (forked for one task on one host, then gone) runs without the cyclic garbage collector. A
  collection there walks the objects it shares with the controller and copies their pages: 96-98 -> 89-90 s.
- The table of Jinja filters and tests is built in the controller before the worker is forked. ansible-core
  builds it on a process's first filter or test (importing every filter and test plugin, ~50 ms of CPU here)
  and only the worker did so, once per task per host. Mitogen warms the module, action and connection loaders
  the same way. A playbook of 40 filter-using tasks on 8 hosts: controller user CPU 12.0-12.4 -> 7.9-9.6 s;
  site.yml no-op: 39.0-41.9 -> 34.5-37.2 s user CPU (runs alternated on one lab).
- What Jinja compiles is kept for the run's other workers (rampart.jinja_code_cache): the no-op compiled the same
  558 templates 4,650 times, 12.3 s of CPU."""

import contextlib
import gc
import os

import ansible.constants
import ansible.executor.process.worker
import ansible.plugins.loader
import ansible_mitogen.affinity
import ansible_mitogen.loaders
import ansible_mitogen.strategy
from rampart import jinja_code_cache

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()  # the base policy pins nothing

_worker_run = ansible.executor.process.worker.WorkerProcess._run


def _worker_run_without_gc(self):
    gc.disable()
    return _worker_run(self)


ansible.executor.process.worker.WorkerProcess._run = _worker_run_without_gc

# Inside the run's own local temp directory (0700, removed by ansible-core when the run ends). A cache that cannot
# be made (a full disk) costs speed only.
with contextlib.suppress(OSError):
    jinja_code_cache.install(os.path.join(ansible.constants.DEFAULT_LOCAL_TMP, "jinja-code"))

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


# ansible-core's own method; a release without it only loses the warm-up (each worker builds its table again).
_WARM_JINJA_TABLES = [
    warm
    for loader in (ansible.plugins.loader.filter_loader, ansible.plugins.loader.test_loader)
    if (warm := getattr(loader, "_ensure_non_collection_wrappers", None)) is not None
]


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    def _queue_task(self, host, task, task_vars, play_context):
        # Returns at once while built; rebuilds after a role added a plugin directory (which clears it).
        for warm in _WARM_JINJA_TABLES:
            warm()
        return super()._queue_task(host, task, task_vars, play_context)
