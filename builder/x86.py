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


def instructions(code: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each instruction of code, in order; a byte capstone cannot
    decode counts as a one-byte instruction."""
    out: list[tuple[int, int]] = []
    offset = 0
    md = _disassembler()
    while offset < len(code):
        before = offset
        for insn in md.disasm(code[offset:], offset):
            out.append((insn.address, insn.size))
            offset = insn.address + insn.size
        if offset == before:
            out.append((offset, 1))
            offset += 1
    return out


def relative_branch(code: bytes, offset: int, size: int) -> tuple[str, int] | None:
    """(condition, target offset) of a jmp/jcc with an 8- or 32-bit displacement at
    `offset`, else None. The condition is "jmp" or the jcc's condition nibble, so the
    short and near forms of one branch compare equal."""
    first = code[offset]
    if (first, size) in ((0xEB, 2), (0xE9, 5)):
        cond = "jmp"
    elif 0x70 <= first <= 0x7F and size == 2:
        cond = f"j{first & 0xF:x}"
    elif first == 0x0F and size == 6 and 0x80 <= code[offset + 1] <= 0x8F:
        cond = f"j{code[offset + 1] & 0xF:x}"
    else:
        return None
    width = 1 if size == 2 else 4
    disp = int.from_bytes(code[offset + size - width:offset + size], "little", signed=True)
    return cond, offset + size + disp
