"""Topologies with real processes on loopback: device (this process) -> edge -> cloud, each server its
own process, SIGKILLed and restarted mid-generation; three replicas, 16 concurrent clients, one replica
SIGKILLed mid-run. Every text must be exactly the fault-free one."""

from __future__ import annotations

import torch

from splitinfer.generation import in_process_generator
from splitinfer.transport.relay import ask_info
from splitinfer.transport.topology import connect
from splitinfer_testing.reliability.topologies import (
    EDGE_CUTS,
    run_relay_kill,
    run_replica_failover,
    spawn_chain,
)


def test_relay_chain_in_three_processes_survives_kill_9_of_the_edge_and_of_the_cloud(lm, zygote):
    edge, cloud = spawn_chain(zygote)
    try:
        reference = in_process_generator(lm, EDGE_CUTS)
        gen = connect(lm, EDGE_CUTS, edge.url, codec="none", timeout_s=10, retries=0)
        try:
            for seed in range(8):  # greedy, 8 prompts: the served chain's text is the in-process chain's
                ids = torch.randint(3, lm.vocab_size, (1, 3 + seed), generator=torch.Generator().manual_seed(seed))
                assert (gen.generate(ids, 6, stop_at_eos=False).token_ids
                        == reference.generate(ids, 6, stop_at_eos=False).token_ids), seed
            assert gen.link.hops and gen.link.hops[0]["bytes_up"] > 0  # the edge -> cloud hop, per step
        finally:
            gen.link.close()
        r, edge = run_relay_kill(lm, zygote, edge, cloud, victim="edge")
        assert r.exit_code == -9 and r.identical and r.replays >= 1, r
        r, cloud = run_relay_kill(lm, zygote, edge, cloud, victim="cloud")
        assert r.exit_code == -9 and r.identical, r
        assert ask_info(edge.url)["relay"]["replays"] >= 1  # the edge replayed its hop into the new cloud
    finally:
        edge.kill()
        cloud.kill()


def test_three_replicas_sixteen_clients_one_replica_kill_9(lm, zygote):
    replicas = [zygote.spawn().wait_ready() for _ in range(3)]
    try:
        r = run_replica_failover(lm, zygote, replicas, clients=16, new_tokens=16)
    finally:
        for srv in replicas:
            srv.kill()
    assert r.exit_code == -9 and not r.errors, r.errors[:3]
    assert r.identical == 16, r.summary()
    assert r.moved_clients >= 1 and len(r.failover_s) >= r.moved_clients, r.summary()  # client i starts on i mod 3
