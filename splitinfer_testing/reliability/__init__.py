"""The reliability harness: hostile input, faults, load and authentication against live split servers.

    from splitinfer_testing.reliability import scenarios as sc
    from splitinfer_testing.reliability.harness import Zygote
    with Zygote() as z:
        server = z.wait_ready().spawn(args=sc.SERVER_ARGS).wait_ready()
        r = sc.run_load(lm, server.url, clients=4, steps=10)

Modules, one concern each: `harness` (forked server processes, a recording TCP relay, bounded sockets),
`common` (prompts, sampling, the fault-free reference), `hostile_plans` (hypothesis strategies for
hostile messages) and `hostile` (the driver that sends them; the hostile-input scenarios), `faults`
(processes killed), `load` (load, abusive clients, quotas), `auth` (authentication, the wire),
`topologies` (relay chains, replicas); `scenarios` gathers the scenarios in one namespace; `report` runs
them all at given sizes into one table.
`tests/reliability/` asserts on the figures and `scripts/reliability_report.py` prints them: one
implementation. Everything runs on loopback, bounded in count and time.
"""
