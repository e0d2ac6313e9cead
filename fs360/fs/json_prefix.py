"""Whether a text can still become a JSON object: `.create` is refused at the write that makes
it impossible (`echo '{bad' > .create` fails in bash, which ignores errors of close()).

A small pushdown automaton over the characters: it accepts every prefix of a valid JSON object
(RFC 8259) and stops at the first character no completion could follow.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
LITERALS = ("true", "false", "null")
WHITESPACE = " \t\r\n"
HEX = "0123456789abcdefABCDEF"
ESCAPES = '"\\/bfnrtu'


def json_object_prefix_error(text: str) -> str:
    """'' when `text` can still become a JSON object, else what makes it impossible."""
    scanner = _Scanner()
    for position, char in enumerate(text):
        error = scanner.feed(char)
        if error:
            line = text.count("\n", 0, position) + 1
            column = position - (text.rfind("\n", 0, position) + 1) + 1
            return f"{error} at line {line} column {column}"
    return scanner.pending_error()


class _Scanner:
    def __init__(self):
        self.stack: list[str] = []      # open containers: "{" or "["
        self.expect = "start"           # start, key, key_or_end, colon, value, value_or_end, next, done
        self.string: str | None = None  # in a string: "key" or "value"
        self.escape = -1                # -1 no escape; 0 after a backslash; 1-4 \\u hex digits left + 1
        self.token = ""                 # a number or literal being read

    def feed(self, char: str) -> str:
        if self.string is not None:
            return self._string_char(char)
        if self.token:
            error = self._token_char(char)
            if error or not char:
                return error
            if self.token:
                return ""
        if char in WHITESPACE:
            return ""
        return self._structural(char)

    def pending_error(self) -> str:
        """At the end of what was written: a token that no more characters could complete."""
        if self.token and not self._viable_token(self.token):
            return f"{self.token!r} is not a JSON value"
        return ""

    # --- the parts --------------------------------------------------------------------------------

    def _string_char(self, char: str) -> str:
        if self.escape == 0:
            if char not in ESCAPES:
                return f"invalid escape \\{char}"
            self.escape = 5 if char == "u" else -1
        elif self.escape > 1:
            if char not in HEX:
                return "invalid \\u escape"
            self.escape -= 1
            if self.escape == 1:
                self.escape = -1
        elif char == "\\":
            self.escape = 0
        elif char == '"':
            self.expect = "colon" if self.string == "key" else "next"
            self.string = None
        elif ord(char) < 0x20:
            return "a control character inside a string"
        return ""

    def _token_char(self, char: str) -> str:
        if char.isalnum() or char in "+-.":
            self.token += char
            return "" if self._viable_token(self.token) else f"{self.token!r} is not a JSON value"
        token, self.token = self.token, ""
        if token not in LITERALS and not NUMBER.fullmatch(token):
            return f"{token!r} is not a JSON value"
        self.expect = "next"
        return ""

    @staticmethod
    def _viable_token(token: str) -> bool:
        if token[0].isalpha():
            return any(literal.startswith(token) for literal in LITERALS)
        return bool(NUMBER.fullmatch(token) or NUMBER.fullmatch(token + "0"))

    def _structural(self, char: str) -> str:
        expect = self.expect
        if expect == "start":
            if char != "{":
                return ".create must be a JSON object (starting with {)"
            self.stack.append("{")
            self.expect = "key_or_end"
        elif expect == "done":
            return "text after the JSON object"
        elif expect in ("key", "key_or_end"):
            if char == '"':
                self.string = "key"
            elif char == "}" and expect == "key_or_end":
                self._close()
            else:
                return "expected a field name in double quotes"
        elif expect == "colon":
            if char != ":":
                return "expected ':' after a field name"
            self.expect = "value"
        elif expect in ("value", "value_or_end"):
            if char == "]" and expect == "value_or_end":
                self._close()
            elif char in "{[":
                self.stack.append(char)
                self.expect = "key_or_end" if char == "{" else "value_or_end"
            elif char == '"':
                self.string = "value"
            elif char.isalnum() or char == "-":
                self.token = char
                if not self._viable_token(char):
                    return f"{char!r} is not a JSON value"
            else:
                return "expected a value"
        elif expect == "next":
            closing = "}" if self.stack[-1] == "{" else "]"
            if char == ",":
                self.expect = "key" if self.stack[-1] == "{" else "value"
            elif char == closing:
                self._close()
            else:
                return f"expected ',' or '{closing}'"
        return ""

    def _close(self) -> None:
        self.stack.pop()
        self.expect = "next" if self.stack else "done"
