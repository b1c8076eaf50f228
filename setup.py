"""Build step: ship the repository's top-level conf/ inside the package, as `splitinfer.conf`.

Everything else is in setup.cfg. conf/ stays at the top of the repository (where `python -m splitinfer.run`
users and Hydra's docs expect it); this maps it into the wheel so an installed copy runs from any folder
(Hydra reads `pkg://splitinfer.conf`), and an editable install maps the same package onto conf/.
"""

from setuptools import find_packages, setup

setup(
    # splitinfer_testing: the test harness (needs the dev extra); the runtime package never imports it
    packages=[*find_packages(include=["splitinfer", "splitinfer.*", "splitinfer_testing", "splitinfer_testing.*"]),
              "splitinfer.conf"],
    package_dir={"splitinfer.conf": "conf"},
    package_data={"splitinfer.conf": ["*.yaml", "**/*.yaml"]},
)
