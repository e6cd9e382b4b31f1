"""Commands the lab tests start get their own stdin, never the test runner's (CI's lab tier once failed on it:
an ssh left the shared stdin non-blocking and the next ansible-playbook refused to start)."""

import os
import sys

from support import lab

CHILD = "import os, sys; print(os.get_blocking(0), sys.stdin.read() or '-')"


def test_a_command_does_not_inherit_a_non_blocking_stdin():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # what a mux ssh does to the descriptor it is handed
    saved = os.dup(0)
    try:
        os.dup2(read_end, 0)
        plain = lab.run([sys.executable, "-c", CHILD])
        fed = lab.run([sys.executable, "-c", CHILD], stdin="input")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert plain.stdout.split() == ["True", "-"], plain.stdout + plain.stderr
    assert fed.stdout.split() == ["True", "input"], fed.stdout + fed.stderr
