# SPDX-License-Identifier: GPL-3.0-or-later
"""Which includers of a changed header compile to the same code: decided from the
preprocessor's output, before anything is compiled.

A changed header is read by hundreds or thousands of built files, but most of them do
not use what changed: a new or edited `static inline` helper, a new prototype, a macro
they never expand. gcc -E costs a fraction of a compile, so both versions of every such
file are preprocessed, and a file is left out of the build when its two outputs differ
only in top-level items gcc emits no code for:

- a `static` function definition (inline or not) whose name nothing else in the file
  mentions: gcc -O2 drops an unreferenced static function;
- a function prototype or an `extern` declaration whose name nothing else mentions.

Anything else that differs (a type, a variable, an item that uses a changed name, a
pragma, top-level asm) keeps the file in the build, where the object diff decides. Line
markers are dropped first: they change only debug information (`__LINE__` is expanded by
the preprocessor, so a moved WARN_ON still differs in the text).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# What matters for finding top-level items: string and character literals (whose
# characters do not count), braces, and at depth 0 the semicolon. (A `;` inside
# parentheses at file scope does not occur: `for (;;)` lives in bodies.)
_LITERAL = r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\''
_AT_TOP = re.compile(r"[\"'{};]")  # a leading class: the regex engine scans fast
_IN_BODY = re.compile(r"[\"'{}]")
_LITERAL_AT = re.compile(_LITERAL)
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_LINEMARKER = re.compile(r"^# \d+ .*$\n?", re.MULTILINE)

# Attributes that make gcc keep (or place) a function nothing calls.
_KEEPS = {"used", "__used__", "constructor", "__constructor__", "destructor",
          "__destructor__", "alias", "__alias__", "externally_visible",
          "__externally_visible__", "weakref", "__weakref__", "ifunc", "__ifunc__"}
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
    def words(self) -> list[str]:
        return _IDENTIFIER.findall(_STRINGS.sub('""', self.text))


_STRINGS = re.compile(_LITERAL)


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
                literal = _LITERAL_AT.match(text, match.start(), line_start)
                position = literal.end() if literal else position
            elif token == "{":
                if depth == 0:
                    body = text[start:match.start()].rstrip().endswith(")")
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
    if text.startswith("#"):
        return None
    words = item.words
    if any(word in _KEEPS for word in words):
        return None
    if text.endswith("}"):  # a function definition: only a static one may go
        head = text[:text.index("{")]
        if "static" not in _IDENTIFIER.findall(_outside_brackets(head)) or "=" in head:
            return None
        return _declarator(head)
    if not text.endswith(";") or "{" in text or "=" in _outside_brackets(text):
        return None
    head_words = _IDENTIFIER.findall(_outside_brackets(text))
    if "typedef" in head_words:
        return None
    name = _declarator(text[:-1])
    if name is not None:
        return name  # a prototype
    if head_words[:1] == ["extern"] and "(" not in text and re.search(
            r"\w\s*(\[[^\]]*\]\s*)*;\Z", text):
        return head_words[-1]  # extern int x; extern char y[];
    return None


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
                index = _after_group(tokens, index)
                continue
            if not _IDENTIFIER.fullmatch(before) or before in _NOT_A_NAME:
                return None
            rest = tokens[_after_group(tokens, index):]
            while rest and rest[0] in _GROUPS and len(rest) > 1 and rest[1] == "(":
                rest = rest[_after_group(rest, 1):]
            return before if not rest else None
        index += 1
    return None


_GROUPS = {"__attribute__", "__attribute", "__typeof__", "__typeof", "typeof", "_Alignas",
           "__asm__", "__asm", "asm"}


def _after_group(tokens: list[str], open_index: int) -> int:
    """The index after the bracket group that opens at tokens[open_index]."""
    depth = 0
    for index in range(open_index, len(tokens)):
        if tokens[index] in "([":
            depth += 1
        elif tokens[index] in ")]":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(tokens)


def uses(item: Item, name: str) -> bool:
    """Whether an item may make gcc emit `name`: any mention counts (a string too: top-level
    asm may call it) but a member access (`.name`, `->name`) and a mention inside a type
    definition (`struct s { long *name; };`, `typedef typeof(name) t;`): neither refers
    to code or data gcc would have to emit."""
    text = item.text
    word = re.compile(rf"\b{re.escape(name)}\b")
    if not word.search(text):
        return False
    if any(word.search(literal) for literal in _STRINGS.findall(text)):
        return True
    if _is_type_definition(text):
        return False
    code = _STRINGS.sub('""', text)
    return any(not code[max(0, match.start() - 16):match.start()].rstrip().endswith(
        (".", "->")) for match in word.finditer(code))


def _is_type_definition(text: str) -> bool:
    """A struct, union or enum definition or a typedef, declaring no initialized object."""
    words = _IDENTIFIER.findall(text[:40])
    return bool(words) and words[0] in ("struct", "union", "enum", "typedef") and \
        text.endswith(";") and "=" not in _outside_brackets(text)


@dataclass(frozen=True)
class Verdict:
    """Whether a file compiles to the same code before and after a patch, and why."""

    same: bool
    reason: str


def compare(original: str, patched: str) -> Verdict:
    """Compare two preprocessed versions of one file (raw gcc -E output)."""
    before, after = normalize(original), normalize(patched)
    if before == after:
        return Verdict(True, "the same after preprocessing")
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
