"""The reliability harness: hostile input, faults, load and authentication against live split servers.

    from splitinfer.transport.reliability import scenarios as sc
    from splitinfer.transport.reliability.harness import Zygote
    with Zygote() as z:
        server = z.wait_ready().spawn(args=sc.SERVER_ARGS).wait_ready()
        r = sc.run_load(lm, server.url, clients=4, steps=10)

Modules: `harness` (forked server processes, a recording TCP relay, bounded sockets), `scenarios`
(each scenario as a function returning its figures), `hostile` (hypothesis-drawn hostile messages and
the driver that sends them). `tests/reliability/` asserts on the figures and
`scripts/reliability_report.py` prints them: one implementation. Everything runs on loopback, bounded
in count and time. The hostile-input scenarios need `hypothesis` and the process figures `psutil`
(both in the `dev` extra); they are imported only when used.
"""
