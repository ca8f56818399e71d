# SPDX-License-Identifier: GPL-3.0-or-later
"""x86-64 instruction facts the diff needs, from the capstone disassembler."""

from __future__ import annotations

from functools import lru_cache

import capstone


@lru_cache(maxsize=1)
def _disassembler() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def instruction_ends(code: bytes) -> dict[int, int]:
    """Map every byte offset of code to the end offset of the instruction holding it.

    A PC-relative relocation's target is `S + A + (insn_end - P)`: the
    addend alone does not say which byte of a section an instruction means.
    """
    ends: dict[int, int] = {}
    offset = 0
    md = _disassembler()
    while offset < len(code):
        decoded = False
        for insn in md.disasm(code[offset:], offset):
            for b in range(insn.address, insn.address + insn.size):
                ends[b] = insn.address + insn.size
            offset = insn.address + insn.size
            decoded = True
        if not decoded:  # data or padding capstone cannot decode: skip one byte
            ends[offset] = offset + 1
            offset += 1
    return ends
