"""The Hydra configs of splitinfer, installed as the package `splitinfer.conf` (see setup.py).

Hydra reads them as `pkg://splitinfer.conf`; this file makes the folder a package so it can.
"""
