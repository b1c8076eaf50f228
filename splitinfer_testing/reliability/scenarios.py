"""Every reliability scenario in one namespace, as `scripts/reliability_report.py` walks them
(`from splitinfer_testing.reliability import scenarios as sc; sc.run_load(...)`). Each lives in the
module of its concern: `hostile` (hostile input), `faults` (processes killed), `load` (load, abusive
clients, quotas), `auth` (authentication and the wire), `topologies` (relay chains, replicas)."""

from splitinfer_testing.reliability.auth import run_auth
from splitinfer_testing.reliability.common import SERVER_ARGS
from splitinfer_testing.reliability.faults import run_client_killed, run_kill_restart
from splitinfer_testing.reliability.hostile import run_hostile, run_hostile_authenticated
from splitinfer_testing.reliability.load import run_abuse, run_fair_share, run_load

__all__ = ["SERVER_ARGS", "run_abuse", "run_auth", "run_client_killed", "run_fair_share", "run_hostile",
           "run_hostile_authenticated", "run_kill_restart", "run_load"]
