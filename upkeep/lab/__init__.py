"""A real local fleet for demos and tests: one sshd per emulated node, a jump host, an nginx file server.

from upkeep.lab import Lab, LabError
lab = Lab(home / "lab")
lab.up(clusters=2, nodes=3)
...
lab.down()
"""

from upkeep.lab.lab import FAULTS, Lab, LabError

__all__ = ["FAULTS", "Lab", "LabError"]
