"""Fixtures for the reliability suite: one tiny model, one server zygote and one shared server process
for the whole session, torch on one thread (2 threads on a busy 2-core machine is ~5x slower)."""

from __future__ import annotations

import pytest

from splitinfer_testing.reliability.common import SERVER_ARGS
from splitinfer_testing.reliability.harness import Zygote


@pytest.fixture(scope="session")
def lm():
    from splitinfer.models import tiny_model

    return tiny_model("llama")


@pytest.fixture(autouse=True)
def _one_thread_here(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def zygote():
    z = Zygote()
    try:
        yield z.wait_ready()
    finally:
        z.close()


@pytest.fixture(scope="session")
def server(zygote):
    """A server process (tiny-llama, cut 2, 64 KiB message cap) shared by the hostile and load tests."""
    srv = zygote.spawn(args=SERVER_ARGS)
    try:
        yield srv.wait_ready()
    finally:
        srv.kill()
