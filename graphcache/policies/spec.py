"""The one option grammar of graphcache: policy specs, nested specs and lists, and a printer that parses back.

    spec   := name [ "{" [ item ("," item)* ] "}" ]
    item   := key "=" value
    value  := spec-with-braces | "[" [ value ("," value)* ] "]" | quoted | bare
    quoted := '...' or "..."          (any characters; no escapes)
    bare   := characters other than , { } [ ] = ' "   (surrounding spaces dropped)

``fora{interval=4,warmup=2}``, ``cfgcache{features=fastercache{spatial=2,temporal=4}}``,
``teacache{coefficients=[4.98e2,-2.83e2,5.58e1,-3.82,2.64e-1]}``. Values come back as strings (a nested spec
as its own text, a list as its items joined by commas: how list-valued fields such as TeaCache's coefficients
are written); the policy's field types convert them (:meth:`PolicyConfig.from_options`).
"""

from __future__ import annotations

from typing import Any

from graphcache.errors import PolicyConfigError

_SPECIAL = ",{}[]='\""


class _Reader:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, what: str) -> PolicyConfigError:
        marked = f"{self.text[: self.pos]}>>>{self.text[self.pos :]}"
        return PolicyConfigError(f"policy spec '{self.text}': {what} at position {self.pos} ({marked}); specs look "
                                 "like name{key=value,...}, values may be nested specs, [lists] or 'quoted'")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_spaces()
        if self.peek() != char:
            raise self.fail(f"expected '{char}'")
        self.pos += 1

    def bare(self) -> str:
        self.skip_spaces()
        start = self.pos
        while self.peek() and self.peek() not in _SPECIAL:
            self.pos += 1
        return self.text[start : self.pos].strip()

    def spec(self) -> tuple[str, dict[str, str]]:
        name = self.bare()
        if not name:
            raise self.fail("expected a policy name")
        options: dict[str, str] = {}
        self.skip_spaces()
        if self.peek() != "{":
            return name, options
        self.pos += 1
        self.skip_spaces()
        if self.peek() == "}":
            self.pos += 1
            return name, options
        while True:
            key = self.bare()
            if not key:
                raise self.fail("expected an option name")
            self.expect("=")
            if key in options:
                raise PolicyConfigError(f"option '{key}' is given twice in '{self.text}'")
            options[key] = self.value()
            self.skip_spaces()
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect("}")
            return name, options

    def value(self) -> str:
        self.skip_spaces()
        char = self.peek()
        if char in ("'", '"'):
            end = self.text.find(char, self.pos + 1)
            if end < 0:
                raise self.fail("unterminated quote")
            value, self.pos = self.text[self.pos + 1 : end], end + 1
            return value
        if char == "[":
            self.pos += 1
            items: list[str] = []
            self.skip_spaces()
            if self.peek() == "]":
                self.pos += 1
                return ""
            while True:
                items.append(self.value())
                self.skip_spaces()
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect("]")
                return ",".join(items)
        start = self.pos
        word = self.bare()
        self.skip_spaces()
        if self.peek() == "{":  # a nested spec: keep its text
            depth = 0
            while self.pos < len(self.text):
                c = self.text[self.pos]
                if c in ("'", '"'):
                    close = self.text.find(c, self.pos + 1)
                    if close < 0:
                        raise self.fail("unterminated quote")
                    self.pos = close
                elif c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        self.pos += 1
                        inner = self.text[start : self.pos].strip()
                        parse_spec(inner)  # the nested spec must parse too
                        return inner
                self.pos += 1
            raise self.fail("unbalanced '{'")
        if not word and self.peek() not in (",", "}", "]"):
            raise self.fail("expected a value")
        return word


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``'fora{interval=4,warmup=2}'`` -> ``('fora', {'interval': '4', 'warmup': '2'})``."""
    if not isinstance(spec, str):
        raise PolicyConfigError(f"a policy spec is a string, got {type(spec).__name__}")
    reader = _Reader(spec.strip())
    name, options = reader.spec()
    reader.skip_spaces()
    if reader.pos != len(reader.text):
        raise reader.fail("unexpected text after the spec")
    return name, options


def format_value(value: Any) -> str:
    """A field value written so that :func:`parse_spec` gives back its string form."""
    text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if text and not any(c in _SPECIAL or c.isspace() for c in text):
        return text
    try:  # a nested spec (cfgcache's features) stays as it is
        name, _ = parse_spec(text)
        if "{" in text and name and not any(c in _SPECIAL for c in name):
            return text
    except PolicyConfigError:
        pass
    if "," in text and not any(c in "{}[]'\"" for c in text):  # a list-valued field (coefficients, codebook)
        return "[" + text + "]"
    quote = "'" if "'" not in text else '"'
    return f"{quote}{text}{quote}"


def format_spec(name: str, options: dict[str, Any]) -> str:
    """``name{key=value,...}`` (just ``name`` without options), parsed back by :func:`parse_spec`."""
    if not options:
        return name
    return name + "{" + ",".join(f"{k}={format_value(v)}" for k, v in options.items()) + "}"
