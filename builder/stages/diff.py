# SPDX-License-Identifier: GPL-3.0-or-later
"""Diff: compare the original and patched object of one translation unit.

Finds the functions whose machine code or references changed (callers changed by
inlining included), new functions and new data, and the callbacks a patch
declares. Refuses what a live patch cannot do, saying what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from builder.correlation import (
    OWN_COPY,
    Side,
    cold_parent,
    correlate,
    masked,
    reference_key,
)
from builder.elf import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    STB_GLOBAL,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from builder.errors import BuildError
from builder.patchset import LineMap

# Callback pointers: our <linux/livepatch_helpers.h> (Linux 6.19 names) and kpatch's macros.
CALLBACK_SECTION = ".discard.klp_callback_ptrs"
CALLBACK_KINDS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
KPATCH_CALLBACK_SECTIONS = {f".kpatch.callbacks.{kind}": kind for kind in CALLBACK_KINDS}

# Code that ran once at boot or never runs again: changing it has no effect live.
INIT_SECTIONS = (".init.text", ".exit.text", ".ref.text", ".init.data", ".init.rodata",
                 ".exit.data")
UNPATCHABLE_CODE = (".noinstr.text", ".entry.text", ".kprobes.text")


@dataclass
class ChangedFunction:
    name: str  # in the original object: the kallsyms name livepatch replaces
    patched_name: str  # the same function in the patched object
    reason: str


@dataclass
class UnitDiff:
    source: str
    target_object: str
    changed: list[ChangedFunction] = field(default_factory=list)
    new_functions: list[str] = field(default_factory=list)
    new_data: list[str] = field(default_factory=list)
    callbacks: dict[str, str] = field(default_factory=dict)  # kind → patched symbol name
    # New global functions and data: other units of the same patch may use them.
    provides: list[str] = field(default_factory=list)
    skipped_init: list[str] = field(default_factory=list)  # "fn in .init.text", left out
    # patched symbol name → original name, for every correlated symbol
    correlation: dict[str, str] = field(default_factory=dict)
    # The two objects compared, as read once: verify and generate use them, not the files.
    original: ElfObject | None = field(default=None, repr=False, compare=False)
    patched: ElfObject | None = field(default=None, repr=False, compare=False)


def _only_line_numbers(old: bytes, new: bytes, lines: Sequence[LineMap]) -> bool:
    """True if every difference is a 32-bit immediate holding a __LINE__ the patch moved.

    `lines`: the unit's own line map, then those of the changed headers it includes.
    """
    i = 0
    while i < len(old):
        if old[i] == new[i]:
            i += 1
            continue
        explained = False
        for start in range(max(0, i - 3), i + 1):
            if start + 4 > len(old):
                break
            a = int.from_bytes(old[start:start + 4], "little")
            b = int.from_bytes(new[start:start + 4], "little")
            if 0 < a < 1_000_000 and a != b and any(m[a] == b for m in lines):
                i = start + 4
                explained = True
                break
        if not explained:
            return False
    return True


def _section_kind(sec: Section) -> str:
    name = sec.name
    if name.startswith((*INIT_SECTIONS, ".init.", ".exit.")):
        return "init"
    if name.startswith(UNPATCHABLE_CODE):
        return "noinstr"
    return "code" if sec.flags & SHF_EXECINSTR else "data"


def diff_unit(orig_obj: ElfObject, patched_obj: ElfObject, source: str, target_object: str,
              lines: LineMap, header_lines: Sequence[LineMap] = (),
              skip_init: bool = False) -> UnitDiff:
    """Compare one unit; `lines` is its source's old→new line map (PatchSet.line_map),
    `header_lines` those of the changed headers (a moved WARN_ON in a header moves a
    __LINE__ in every file that includes it). With `skip_init`, changed __init code is
    left out (recorded in `skipped_init`) instead of refused."""
    orig, patched = Side(orig_obj), Side(patched_obj)
    rename = correlate(orig, patched)
    identity = {n: n for n in list(orig.functions) + list(orig.objects)}
    result = UnitDiff(source=source, target_object=target_object, correlation=rename,
                      original=orig_obj, patched=patched_obj)

    result.callbacks = _callbacks(patched)
    callback_functions = set(result.callbacks.values())

    init_changes: list[str] = []
    for name, psym in patched.functions.items():
        kind = _section_kind(psym.section)
        oname = rename.get(name)
        if oname is None:
            if kind == "init":
                continue  # a new __init function never runs in a live patch
            if name not in callback_functions:
                result.new_functions.append(name)
            continue
        osym = orig.functions[oname]
        reason = _function_difference(orig, osym, patched, psym, rename, identity,
                                      (lines, *header_lines))
        if reason is None:
            continue
        if kind == "init":
            init_changes.append(f"{oname} in {psym.section.name}")
            continue
        if kind == "noinstr":
            raise BuildError(
                stage="diff", file=source, function=oname,
                message=f"{oname} is in {psym.section.name}, which cannot be traced by "
                        "ftrace and so cannot be live-patched",
                hint="patch the callers of this function instead")
        _mark_changed(result, orig, rename, oname, name, reason)

    init_changes += _check_data(orig, patched, rename, identity, result, source)
    _check_init(init_changes, result, skip_init)
    _check_traceable(orig, result)

    result.provides = sorted(
        n for n in result.new_functions + result.new_data
        if (patched.functions.get(n) or patched.objects.get(n)).bind == STB_GLOBAL)
    return result


def require_change(diffs: list[UnitDiff]) -> None:
    """A patch must change a function or declare a callback in at least one unit.

    A unit may change nothing itself when it only adds functions or data that another
    changed file of the same patch uses.
    """
    if any(d.changed or d.callbacks for d in diffs):
        return
    new = any(d.new_functions for d in diffs)
    what = "new functions only, which nothing calls" if new else \
        "no change to any function's machine code"
    sources = ", ".join(d.source for d in diffs)
    raise BuildError(
        stage="diff", file=sources,
        message=f"no functional change in {sources}: the patch makes {what}",
        hint="check that the patch changes code compiled in this kernel's configuration "
             "(comments, whitespace and unused code produce no live patch)")


def _check_init(init_changes: list[str], result: UnitDiff, skip_init: bool) -> None:
    """Init code ran once (at boot, or when its module loaded) and has been freed.

    Refused by default: the fix's init-time part would silently not happen. A fix whose
    runtime part stands on its own may leave it out, explicitly (--skip-init-changes);
    the manifest records what was left out.
    """
    if not init_changes:
        return
    if skip_init:
        result.skipped_init = init_changes
        return
    runtime = ", ".join(c.name for c in result.changed)
    alone = (f"; its runtime part ({runtime}) could be live-patched alone with "
             "--skip-init-changes, if it does not rely on what the new init code would set "
             "up") if runtime else ""
    raise BuildError(
        stage="diff", file=result.source, function=init_changes[0].split(" ", 1)[0],
        message=f"the patch changes __init code ({', '.join(init_changes)}): init code ran "
                f"once, at boot or when its module loaded, and has been freed{alone}",
        hint="do the one-time work in a KLP_POST_PATCH_CALLBACK instead, or reboot into a "
             "fixed kernel")


def ftrace_sites(obj: ElfObject) -> set[tuple[int, int]]:
    """(id of section, offset) of every __fentry__ site the object lists in __mcount_loc."""
    sec = obj.section("__mcount_loc")
    return {(id(r.symbol.section), r.symbol.value + r.addend)
            for r in (sec.relocs or [] if sec else []) if r.symbol.section is not None}


def _mark_changed(result: UnitDiff, orig: Side, rename: dict[str, str], oname: str,
                  pname: str, reason: str) -> None:
    """Record a changed function; a changed .cold part is patched with its parent (it
    has no ftrace entry of its own, and only its parent jumps into it)."""
    parent = cold_parent(oname)
    if parent and parent in orig.functions:
        pparent = next((p for p, o in rename.items() if o == parent), parent)
        oname, pname, reason = parent, pparent, f"its .cold part changed: {reason}"
    for change in result.changed:
        if change.name == oname:
            if change.reason.startswith("its .cold part changed"):
                change.reason = reason  # its own difference says more
            return
    result.changed.append(ChangedFunction(name=oname, patched_name=pname, reason=reason))


def _check_traceable(orig: Side, result: UnitDiff) -> None:
    """livepatch redirects a function through its ftrace site: it must have one."""
    sites = ftrace_sites(orig.obj)
    for change in result.changed:
        osym = orig.functions[change.name]
        if not any((id(osym.section), off) in sites
                   for off in range(osym.value, osym.value + max(osym.size, 1))):
            raise BuildError(
                stage="diff", file=result.source, function=change.name,
                message=f"{change.name} has no ftrace entry (it is notrace, or "
                        f"{result.source} is built without ftrace, as kernel/trace/ is), so "
                        "livepatch cannot redirect it",
                hint="patch the traceable functions that call it instead")


def _function_difference(orig: Side, osym: Symbol, patched: Side, psym: Symbol,
                         rename: dict[str, str], identity: dict[str, str],
                         lines: Sequence[LineMap]) -> str | None:
    if osym.size != psym.size:
        return f"size {osym.size} → {psym.size} bytes"
    orelocs, prelocs = orig.relocs_in(osym), patched.relocs_in(psym)
    okeys = [(r.offset - osym.value, reference_key(orig, osym.section, r, identity))
             for r in orelocs]
    pkeys = [(r.offset - psym.value, reference_key(patched, psym.section, r, rename))
             for r in prelocs]
    if okeys != pkeys:
        for (ooff, okey), (poff, pkey) in zip(okeys, pkeys, strict=False):
            if (ooff, okey) != (poff, pkey):
                return f"reference at +{poff:#x} changed ({_describe(okey)} → {_describe(pkey)})"
        return "references changed"
    obody = masked(orig.body(osym), osym.value, orelocs)
    pbody = masked(patched.body(psym), psym.value, prelocs)
    if obody == pbody or _only_line_numbers(obody, pbody, lines):
        return None
    first = next(i for i in range(len(obody)) if obody[i] != pbody[i])
    return f"code differs from +{first:#x}"


def _describe(key: tuple) -> str:
    kind = key[1]
    if kind == "string":
        return repr(key[2].decode(errors="replace"))
    return str(key[2])


def _callbacks(patched: Side) -> dict[str, str]:
    """Callbacks a patch declares with KLP_*_CALLBACK or KPATCH_*_CALLBACK."""
    found: dict[str, str] = {}
    obj = patched.obj
    sec = obj.section(CALLBACK_SECTION)
    if sec is not None:
        for slot in obj.symbols_in(sec):
            kind = next((k for k in CALLBACK_KINDS
                         if slot.name.startswith(f"__klp_{k}_callback")), None)
            rel = next((r for r in sec.relocs or [] if r.offset == slot.value), None)
            if kind and rel:
                found[kind] = _function_name(obj, rel)
    for name, kind in KPATCH_CALLBACK_SECTIONS.items():
        sec = obj.section(name)
        if sec is not None and sec.relocs:
            first = min(sec.relocs, key=lambda r: r.offset)
            found[kind] = _function_name(obj, first)
    return found


def _function_name(obj: ElfObject, rel: Reloc) -> str:
    sym = rel.symbol
    if sym.type == STT_SECTION:
        inner = obj.symbol_at(sym.section, rel.addend)
        if inner is not None:
            return inner.name
    return sym.name


def _check_data(orig: Side, patched: Side, rename: dict[str, str],
                identity: dict[str, str], result: UnitDiff, source: str) -> list[str]:
    """New data is fine; changing the initial value of existing data is not.

    Changed read-only data travels as a new copy that the patched functions use. Returns
    the init code that used it (it ran with the old copy).
    """
    copies: list[tuple[str, Symbol]] = []
    for name, psym in patched.objects.items():
        sec = psym.section
        if not sec.flags & SHF_ALLOC or sec.name.startswith((".discard", ".kpatch")) or \
                sec.name in OWN_COPY:
            continue
        if _section_kind(sec) == "init":
            continue
        oname = rename.get(name)
        if oname is None:
            if not name.startswith("__klp_") and not name.startswith("__UNIQUE_ID"):
                result.new_data.append(name)
            continue
        osym = orig.objects[oname]
        okeys = [(r.offset - osym.value, reference_key(orig, osym.section, r, identity))
                 for r in orig.relocs_in(osym)]
        pkeys = [(r.offset - psym.value, reference_key(patched, psym.section, r, rename))
                 for r in patched.relocs_in(psym)]
        obody = masked(orig.body(osym), osym.value, orig.relocs_in(osym))
        pbody = masked(patched.body(psym), psym.value, patched.relocs_in(psym))
        if okeys == pkeys and obody == pbody:
            continue
        if sec.flags & SHF_WRITE:
            raise BuildError(
                stage="diff", file=source, function=oname,
                message=f"the patch changes the initial value of existing data '{oname}'; "
                        "a live patch cannot re-initialise data the running kernel already "
                        "holds (its current value may differ)",
                hint="leave the definition alone and change the value from a "
                     "KLP_POST_PATCH_CALLBACK (restore it in KLP_POST_UNPATCH_CALLBACK), "
                     "or attach new state with a shadow variable (klp_shadow_get_or_alloc)")
        # Changed read-only data: ship a new copy; every user must be patched to use it.
        result.new_data.append(name)
        copies.append((oname, psym))
        for fname, fsym in patched.functions.items():
            if any(_points_at(r, psym) for r in patched.relocs_in(fsym)):
                oname_f = rename.get(fname)
                if oname_f and _section_kind(fsym.section) != "init":
                    _mark_changed(result, orig, rename, oname_f, fname,
                                  f"uses read-only data '{oname}', which changed")
    return _check_copies_reachable(patched, copies, set(result.new_data), source)


def _points_at(rel: Reloc, sym: Symbol) -> bool:
    if rel.symbol is sym:
        return True
    return rel.symbol.type == STT_SECTION and rel.symbol.section is sym.section and \
        sym.value <= rel.addend < sym.value + max(sym.size, 1)


def _stale_copy(source: str, oname: str, holder: str, hint: str) -> BuildError:
    return BuildError(stage="diff", file=source, function=oname,
                      message=f"the patch changes read-only data '{oname}', {holder}: the "
                              "running kernel would keep using the old contents beside "
                              "patched code that uses the new", hint=hint)


def _check_copies_reachable(patched: Side, copies: list[tuple[str, Symbol]],
                            new_data: set[str], source: str) -> list[str]:
    """A new copy of read-only data reaches only the patched functions. Whatever else
    holds the old copy's address — other files (the data is global), data of this file
    the patch does not replace (an ops table, a driver's id_table), init code that
    already ran — keeps using the old contents beside code written for the new: refused,
    or for init code returned to be judged with the other init changes."""
    init_users: list[str] = []
    for oname, psym in copies:
        if psym.bind == STB_GLOBAL:
            raise _stale_copy(source, oname, "which is global: other files of the running "
                              "kernel hold its address",
                              "leave the global definition alone and give the patched "
                              "functions a new static table under another name")
        for holder in patched.objects.values():
            if holder is psym or holder.name in new_data or \
                    not holder.section.flags & SHF_ALLOC or \
                    holder.section.name.startswith((".discard", ".kpatch", *OWN_COPY)):
                continue
            if not any(_points_at(r, psym) for r in patched.relocs_in(holder)):
                continue
            if _section_kind(holder.section) == "init":
                init_users.append(f"{holder.name} (init data holding '{oname}')")
                continue
            raise _stale_copy(source, oname, f"and '{holder.name}' holds its address",
                              "change the data from a KLP_POST_PATCH_CALLBACK, or make the "
                              "patched functions use a new table under another name")
        for fname, fsym in patched.functions.items():
            if _section_kind(fsym.section) == "init" and \
                    any(_points_at(r, psym) for r in patched.relocs_in(fsym)):
                init_users.append(f"{fname} in {fsym.section.name} (uses '{oname}')")
    return init_users
