# SPDX-License-Identifier: GPL-3.0-or-later
"""Which includers of a changed header compile to the same code: decided from the
preprocessor's output, before anything is compiled.

A changed header is read by hundreds or thousands of built files, but most of them do
not use what changed: a new or edited `static inline` helper, a new prototype, a macro
they never expand. gcc -E costs a fraction of a compile, so both versions of every such
file are preprocessed, and a file is left out of the build when its two outputs differ
only in top-level items gcc emits no code for:

- a `static inline` function definition whose name nothing else in the file mentions:
  gcc drops an unreferenced inline function whatever the optimization level (a plain
  `static` one it keeps under `optimize("O0")`, a pragma or per-file flags);
- a function prototype or an `extern` declaration of one name that nothing else
  mentions, and that is not a library function gcc may call on its own (memcpy, abort).

A mention is any occurrence of the name, in a string too (top-level asm may call it) and
as `__builtin_NAME`, except a member access (`.name`, `->name`) and a member's own
declarator in a struct or union definition.

Anything else that differs (a type, a variable, an item that uses a changed name, a
pragma, top-level asm) keeps the file in the build, where the object diff decides. Line
markers are dropped first: they change only debug information (`__LINE__` is expanded by
the preprocessor, so a moved WARN_ON still differs in the text).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

RULES = 2  # bump when a verdict could change: kept verdicts (compile's .klp-same) expire

# What matters for finding top-level items: string and character literals (whose
# characters do not count), braces, and at depth 0 the semicolon. (A `;` inside
# parentheses at file scope does not occur: `for (;;)` lives in bodies.)
_LITERAL = r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\''
_AT_TOP = re.compile(r"[\"'{};]")  # a leading class: the regex engine scans fast
_IN_BODY = re.compile(r"[\"'{}]")
_STRINGS = re.compile(_LITERAL)  # string and character literals
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_LINEMARKER = re.compile(r"^# \d+ .*$\n?", re.MULTILINE)
_LINE_BUILTINS = re.compile(r"__builtin_(LINE|FILE|FUNCTION)\b")

# Attributes that make gcc keep (or place) a function nothing calls.
_KEEPS = {"used", "__used__", "constructor", "__constructor__", "destructor",
          "__destructor__", "alias", "__alias__", "externally_visible",
          "__externally_visible__", "weakref", "__weakref__", "ifunc", "__ifunc__",
          "optimize", "__optimize__"}
# Functions gcc may call with no mention in the source (a struct copy calls memcpy, a
# trap abort, instrumentation its hooks): a changed declaration of one (an asm label)
# changes code that never names it.
_LIBCALL = re.compile(r"(mem|str|bcmp|bzero|abort|__stack_chk_|__fentry__|__x86_|"
                      r"__(?:a|k|t|ub|hwa)san_|__sanitizer_|__gcov_|__cyg_profile_|"
                      r"__[a-z]+[sdtx]i[0-9])")
# Words before a '(' that are not a declarator's name.
_NOT_A_NAME = {"__alignof__", "_Static_assert", "sizeof", "__extension__", "void", "char",
               "short", "int", "long", "float", "double", "signed",
               "unsigned", "_Bool", "bool", "const", "volatile", "restrict", "__restrict",
               "static", "extern", "inline", "__inline", "__inline__", "register",
               "struct", "union", "enum", "typedef", "return", "if", "while", "for"}


@dataclass(frozen=True)
class Item:
    """One top-level item of a preprocessed file: a declaration, a definition, or a
    directive line the preprocessor left (#pragma)."""

    text: str

    @property
    def attribute_words(self) -> list[str]:
        """The identifiers inside the item's __attribute__((...)) groups."""
        text = _STRINGS.sub('""', self.text)
        words: list[str] = []
        for match in re.finditer(r"\b__attribute(?:__)?\s*\(", text):
            end = _group_end(text, match.end() - 1)
            words += _IDENTIFIER.findall(text[match.end():end])
        return words


def normalize(text: str) -> str:
    """Preprocessed text without line markers (they only steer debug information)."""
    return _LINEMARKER.sub("", text)


def items(text: str) -> list[Item]:
    """Split normalized preprocessed text into top-level items.

    An item ends at a `;` outside every bracket, or at the `}` closing a function body
    (a `{` at depth 0 right after a `)`); a line starting with `#` between items is an
    item of its own. Where this guesses wrong (`struct __attribute__((x)) {`), both
    versions are split the same way and the pieces are not recognised as droppable:
    the file is built.
    """
    found: list[Item] = []
    start = depth = 0
    body = False  # the open brace at depth 0 began a function body

    def close(end: int) -> None:
        nonlocal start
        if text[start:end].strip():
            found.append(Item(text[start:end].strip()))
        start = end

    position = 0
    for line_start, line in _directive_lines(text):
        while position < line_start:
            match = (_IN_BODY if depth else _AT_TOP).search(text, position, line_start)
            if match is None:
                break
            token, position = match.group(), match.end()
            if token in "\"'":  # skip the literal: its braces and semicolons do not count
                literal = _STRINGS.match(text, match.start(), line_start)
                position = literal.end() if literal else position
            elif token == "{":
                if depth == 0:  # `f(void) {`, or `(*f(void))[2] {` (returns an array)
                    body = text[start:match.start()].rstrip().endswith((")", "]"))
                depth += 1
            elif token == "}":
                depth -= 1
                if depth == 0 and body:
                    body = False
                    close(position)
            elif token == ";":
                close(position)
        position = line_start
        if line is not None:
            position = line_start + len(line)
            if depth == 0:  # a #pragma between items; inside a body it stays there
                close(line_start)
                close(position)
    close(len(text))
    return found


def _directive_lines(text: str):
    """(offset, line) of each line starting with '#', then (len(text), None)."""
    for match in re.finditer(r"^#.*$\n?", text, re.MULTILINE):
        yield match.start(), match.group()
    yield len(text), None


def droppable_name(item: Item) -> str | None:
    """The name an item declares or defines, when gcc emits no code for it unless that
    name is used elsewhere; None for every other item."""
    text = item.text
    if text.startswith("#") or any(w in _KEEPS for w in item.attribute_words):
        return None
    if text.endswith("}"):  # a function definition: only a static inline one may go
        head = text[:text.index("{")]
        words = _IDENTIFIER.findall(_outside_brackets(head))
        if "static" not in words or not {"inline", "__inline", "__inline__"} & set(words) \
                or "=" in head:
            return None
        return _declarator(head)
    if not text.endswith(";") or "{" in text:
        return None
    outside = _outside_brackets(_without_groups(text))
    if "=" in outside or "," in outside or "typedef" in _IDENTIFIER.findall(outside):
        return None  # an initializer, several declarators, a type
    name = _declarator(text[:-1])
    if name is None and _IDENTIFIER.findall(outside)[:1] == ["extern"] and re.search(
            r"\w\s*(\[[^\]]*\]\s*)*;\Z", _without_groups(text)):
        name = _IDENTIFIER.findall(outside)[-1]  # extern int x; extern char y[];
    if name is None or _LIBCALL.match(name):
        return None
    return name


def _without_groups(text: str) -> str:
    """Text without its __attribute__((...)) and typeof(...) groups (a per-CPU or
    section-placed extern is still one extern declaration)."""
    out, position = [], 0
    for match in re.finditer(r"\b(?:__attribute(?:__)?|__typeof(?:__)?|typeof)\s*\(", text):
        if match.start() < position:
            continue
        out.append(text[position:match.start()])
        position = _group_end(text, match.end() - 1)
    return "".join(out) + text[position:]


def _group_end(text: str | list[str], open_at: int) -> int:
    """The index after the bracket group that opens at text[open_at] (in a string of
    characters or a list of tokens)."""
    depth = 0
    for index in range(open_at, len(text)):
        if text[index] in ("(", "["):
            depth += 1
        elif text[index] in (")", "]"):
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _outside_brackets(text: str) -> str:
    """Text with every bracketed group removed (depth 0 only)."""
    out, depth = [], 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


def _declarator(head: str) -> str | None:
    """The function name in `head` (the text before a body or the closing `;`) when it
    has the form `[specifiers] name(parameters) [attributes]`; None for any other form
    (a function pointer, an array, a call in a bound)."""
    tokens = re.findall(r"[A-Za-z_]\w*|\S", head)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in ("[", "{", "=", ";"):
            return None
        if token == "(":
            before = tokens[index - 1] if index else ""
            if before in _GROUPS:  # __attribute__((...)), typeof(...): skip the group
                index = _group_end(tokens, index)
                continue
            if not _IDENTIFIER.fullmatch(before) or before in _NOT_A_NAME:
                return None
            rest = tokens[_group_end(tokens, index):]
            while rest and rest[0] in _GROUPS and len(rest) > 1 and rest[1] == "(":
                rest = rest[_group_end(rest, 1):]
            return before if not rest else None
        index += 1
    return None


_GROUPS = {"__attribute__", "__attribute", "__typeof__", "__typeof", "typeof", "_Alignas",
           "__asm__", "__asm", "asm"}


def uses(item: Item, name: str) -> bool:
    """Whether an item may make gcc emit `name` or depend on its declaration: any
    mention counts (in a string too: top-level asm may call it; `__builtin_NAME` too),
    but a member access (`.name`, `->name`) and a member's declarator in a struct or
    union definition, which name a member, not the function or object."""
    text = item.text
    word = re.compile(rf"(?<![\w$])(?:__builtin_)?{re.escape(name)}\b")
    if not word.search(text):
        return False
    if any(word.search(literal) for literal in _STRINGS.findall(text)):
        return True
    code = _STRINGS.sub('""', text)
    members = _member_declarators(code)
    return any(match.start() not in members and not code[max(0, match.start() - 16):
               match.start()].rstrip().endswith((".", "->")) for match in word.finditer(code))


def _member_declarators(code: str) -> set[int]:
    """Offsets of the words a struct or union definition (`struct t {...};`, no object
    declared) declares as members: in its braces, outside every () and [] group. A
    word in a member's type (`typeof(x)`, `[sizeof(x)]`) is in a group, so it counts."""
    if not re.match(r"\s*(struct|union)\b[^{;=]*\{", code) or \
            not re.search(r"\}\s*(__attribute__\s*\(\(.*\)\)\s*)?;\s*\Z", code, re.S):
        return set()
    found, braces, groups = set(), 0, 0
    for match in re.finditer(r"[A-Za-z_]\w*|[{}()\[\]]", code):
        token = match.group()
        if token == "{":
            braces += 1
        elif token == "}":
            braces -= 1
        elif token in "([":
            groups += 1
        elif token in ")]":
            groups -= 1
        elif braces and not groups:
            found.add(match.start())
    return found


@dataclass(frozen=True)
class Verdict:
    """Whether a file compiles to the same code before and after a patch, and why."""

    same: bool
    reason: str


def compare(original: str, patched: str) -> Verdict:
    """Compare two preprocessed versions of one file (raw gcc -E output)."""
    before, after = normalize(original), normalize(patched)
    if before == after and (original == patched or not _LINE_BUILTINS.search(original)):
        return Verdict(True, "the same after preprocessing")
    if _LINE_BUILTINS.search(original) or _LINE_BUILTINS.search(patched):
        return Verdict(False, "the compiler resolves __builtin_LINE/FILE from line markers")
    old, new = items(before), items(after)
    matcher = difflib.SequenceMatcher(None, [i.text for i in old], [i.text for i in new])
    changed_old: list[Item] = []
    changed_new: list[Item] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            changed_old += old[i1:i2]
            changed_new += new[j1:j2]
    names: set[str] = set()
    for item in changed_old + changed_new:
        name = droppable_name(item)
        if name is None:
            return Verdict(False, f"changed: {item.text[:80]}")
        names.add(name)
    for name in sorted(names):
        for every, changed in ((old, changed_old), (new, changed_new)):
            skip = {id(item) for item in changed}
            user = next((item for item in every if id(item) not in skip and name in item.text
                         and uses(item, name)), None)
            if user is not None:
                return Verdict(False, f"{name} is used: {user.text[:80]}")
    return Verdict(True, "only unused " + ", ".join(sorted(names)) + " changed")


__all__ = ["Item", "Verdict", "compare", "droppable_name", "items", "normalize", "uses"]
