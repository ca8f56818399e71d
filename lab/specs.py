# SPDX-License-Identifier: GPL-3.0-or-later
"""VM specs: `[NAME=]RELEASE[,OTHER_RELEASE…][+EXTRA KERNEL CMDLINE]`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lab.errors import LabError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
# A '+' followed by 'debNN-' belongs to a release name (6.12.57+deb12-amd64), not the cmdline.
_APPEND_SEP = re.compile(r"\+(?!deb\d+-)")


@dataclass(frozen=True)
class Spec:
    """One requested VM: boot `kernels[0]`; the image also carries the other kernels."""

    kernels: tuple[str, ...]  # aliases or releases, as written
    name: str | None = None  # None: derived from the resolved release
    append: str = ""  # extra kernel command line

    @property
    def boot(self) -> str:
        return self.kernels[0]


def parse_spec(text: str) -> Spec:
    """Parse one spec; examples: `6.1.0-56-amd64`, `sig=6.1.0-56-amd64+module.sig_enforce=1`,
    `multi=6.1.0-56-amd64,6.1.0-55-amd64`."""
    text = text.strip()
    m = _APPEND_SEP.search(text)
    head, append = (text[: m.start()], text[m.end():].strip()) if m else (text, "")
    name = None
    if "=" in head:
        name, head = head.split("=", 1)
        if not _NAME.match(name):
            raise LabError(f"bad VM name {name!r} in spec {text!r}: use letters, digits "
                           "and '-' (it becomes the guest's hostname)")
    kernels = tuple(k.strip() for k in head.split(",") if k.strip())
    if not kernels:
        raise LabError(f"spec {text!r} names no kernel release; expected "
                       "[NAME=]RELEASE[,RELEASE…][+CMDLINE], e.g. 6.1.0-56-amd64")
    for k in kernels:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$", k):
            raise LabError(f"bad kernel release {k!r} in spec {text!r}")
    return Spec(kernels=kernels, name=name, append=append)


def default_name(release: str) -> str:
    """'6.1.0-56-amd64' -> 'vm-6-1-0-56-amd64' (a valid hostname and inventory name)."""
    return "vm-" + re.sub(r"[^a-z0-9]+", "-", release.lower()).strip("-")
