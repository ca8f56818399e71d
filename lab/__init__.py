# SPDX-License-Identifier: GPL-3.0-or-later
"""The klp.livepatch lab: real Debian 12 and 13 kernels in QEMU VMs, reached by Ansible over SSH."""

from lab.core import VM, Lab
from lab.errors import LabError

__all__ = ["VM", "Lab", "LabError"]
