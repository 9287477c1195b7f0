"""Secret redaction for anything that leaves a node or reaches a person: streamed line by line.

The rules are not ours to invent. Token formats come from the plugins of Yelp's `detect-secrets`
(maintained: AWS, GitHub, GitLab, Slack, Stripe, JWT, SendGrid, npm, PyPI, OpenAI, Twilio, Azure, ...),
compiled once from their own deny lists; the words that name a secret (`password`, `pwd`, `api_key`,
`secret`, ...) are its keyword deny list, plus the few it lacks (`pass`, `token`, `credential`). Around
those words sit the forms a log really has, which detect-secrets (made for source files) misses: key=value
and key: value with any quoting, JSON keys, a YAML key whose value is on the next line(s), URLs with
credentials, command lines (`--password X`, `mysql -pX`, `sshpass -p X`, `PGPASSWORD X`), Authorization
headers, and whole PEM private-key blocks.

Fail-closed: a private key's whole PEM block goes, from BEGIN to END, and a BEGIN without an END drops
the rest of the file; a line over `MAX_LINE` bytes is dropped whole. Every removal is counted per rule
(`Redactor.counts`); nothing removed is ever logged. Memory stays flat whatever the size: the stream is
read in blocks of whole lines, and only lines a rule could match are looked at closely.

docs/reliability.md has the recall and false positives measured on tests/unit/redaction_corpus.py.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from tasks.fileserver import CHUNK

MAX_LINE = 1 << 20

# -- rules from detect-secrets ------------------------------------------------------------------------
# Not token formats: found by our own rules below (keywords, URLs, PEM blocks) or not secrets (IPs).
_NOT_TOKEN_RULES = {
    "Base64 High Entropy String",
    "Basic Auth Credentials",
    "Hex High Entropy String",
    "Private Key",
    "Public IP (ipv4)",
    "Secret Keyword",
}
# Formats detect-secrets 1.5 lacks, in its style (gitleaks has them).
_EXTRA_TOKENS: list[tuple[str, str, int]] = [
    ("google_api_key", r"AIza[0-9A-Za-z_\-]{35}", 0),
    ("github_token", r"github_pat_[A-Za-z0-9_]{22,255}", 0),
    ("slack_token", r"xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+", re.IGNORECASE),
    ("stripe_access_key", r"(?:r|s)k_test_[0-9a-zA-Z]{24,}", 0),
    # gitleaks' shapes for tokens found leaking by the adversarial pass (issue #14)
    ("npm_token", r"\bnpm_[A-Za-z0-9]{36}\b", 0),
    ("openai_token", r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}", 0),
    ("vault_token", r"\bhv[sbr]\.[A-Za-z0-9_\-]{24,}", 0),
    ("digitalocean_token", r"\bdo[opr]_v1_[a-f0-9]{64}\b", 0),
    ("shopify_token", r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", 0),
]


def _slug(secret_type: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")
    return {"json_web_token": "jwt", "npm_tokens": "npm_token"}.get(words, words)


def _token_rules() -> list[tuple[str, re.Pattern[bytes]]]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    rules = []
    plugins: dict[str, Any] = get_mapping_from_secret_type_to_class()
    for secret_type, plugin in sorted(plugins.items()):
        if secret_type in _NOT_TOKEN_RULES:
            continue
        for rx in getattr(plugin(), "denylist", ()):
            # A detector only needs to find a token; redaction must take all of it: a lazy tail
            # (the JWT rule's signature part) is made greedy.
            pattern = re.sub(r"\*\?$", "*", rx.pattern)
            rules.append((_slug(secret_type), re.compile(pattern.encode(), rx.flags & re.IGNORECASE)))
    rules += [(name, re.compile(pattern.encode(), flags)) for name, pattern, flags in _EXTRA_TOKENS]
    return rules


_SHORT_WORDS = ("pass", "pwd", "pw")  # only where they stand alone: not compass, bypass, stopwatch


def _keywords() -> bytes:
    """detect-secrets' keyword deny list (`api_?key`, `password`, `pwd`, `secret`, ...) and ours."""
    from detect_secrets.plugins.keyword import DENYLIST

    ours = (
        "passphrase",
        "pass",
        "pw",
        "token",
        "credentials?",
        "access_?key",
        "secret_?key",
        "auth_?token",
        "signing_?key",
        "encryption_?key",
        "master_?key",
    )
    words = sorted({*DENYLIST, *ours}, key=len, reverse=True)
    return b"|".join(word.replace("_?", "[_.-]?").encode() for word in words)


def _long_keywords() -> re.Pattern[bytes]:
    words = [w for w in _keywords().split(b"|") if w.decode() not in _SHORT_WORDS]
    return re.compile(rb"(?i)" + b"|".join(words))


TOKEN_RULES = _token_rules()
_WORDS = _keywords()
_NOT_DONE = rb"(?![\"']?\[REDACTED)"
# Not secrets: booleans, nulls, masks, placeholders, templates, YAML block indicators (value below).
_PLACEHOLDER = (
    rb"(?:true|false|null|none|nil|yes|no|\*+|x+|<[^>\s]*>|\$\{?\w+\}?|%s|\{\{[^}]*\}\}|[|>][-+0-9]*|"
    rb"\((?:none|null|empty|unset|not set|hidden)[^)\n]*\))"
)
_VALUE = (
    rb"(?P<val>"
    + _NOT_DONE
    + rb"(?:\"(?:[^\"\\]|\\.)+\"|'[^']+'|(?!"
    + _PLACEHOLDER
    + rb"(?:[\s,;&}\])\"']|$))"
    rb"[^\s\"',;&}\])]+))"
)
# A key naming a secret: the word may carry a prefix (DB_PASSWORD, PGPASSWORD, x-api-key) and a
# suffix after a separator (password_file), never glued letters (passed, tokenizer, bypass, secretary).
# (It starts where a word starts: tried at every character, the lazy prefix made long lines quadratic.)
_KEY_BODY = rb"(?P<key>[\w.-]*?(?:" + _WORDS + rb")s?(?:[_.-][\w.-]*)?)(?![a-z0-9])"
_KEY = rb"(?<![\w.-])" + _KEY_BODY
_LONG = _long_keywords()
# Keys that name a property of a secret, not the secret: max_tokens, pw_min_length, token_type,
# password_policy, token_ttl, password_file (a path), ...
_ABOUT_A_SECRET = re.compile(
    rb"(?i)(?:^|[_.-])(?:max|min|num)[_.-]|[_.-](?:length|len|count|size|ttl|expiry|expires|expires_in|type|"
    rb"policy|hint|file|path|min|max|age|timeout|required|enabled|format|url|endpoint|name|id)$"
)
_SHORT_ALONE = re.compile(rb"(?i)(?:^|[^a-z])(?:pass|pwd|pw)s?(?:[^a-z]|$)")

_XML_WORDS = rb"password|passwd|passphrase|secret|token|api[_.-]?key|access[_.-]?key|credential"

# (name, pattern): the `val` group is replaced when there is one, else the whole match.
CONTEXT_RULES: list[tuple[str, re.Pattern[bytes]]] = [
    # a token has a digit or a symbol: "bearer capacity" is not one
    (
        "bearer",
        re.compile(
            rb"(?i)\bbearer\s+" + _NOT_DONE + rb"(?=[A-Za-z]*[0-9\-._~+/])(?P<val>[A-Za-z0-9\-._~+/]+=*)"
        ),
    ),
    ("basic_auth", re.compile(rb"(?i)\bauthorization\s*[:=]\s*basic\s+(?P<val>[A-Za-z0-9+/]+=*)")),
    ("token", re.compile(rb"(?i)\bauthorization\s*[:=]\s*(?:token|apikey|key)\s+" + _VALUE)),
    ("password", re.compile(rb"(?i)\b[a-z][a-z0-9+.-]*://[^\s:/@]*:(?P<val>" + _NOT_DONE + rb"[^\s@/]+)@")),
    (
        "password",
        re.compile(
            rb"(?i)\b(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b[^\n]*?\s-p(?P<val>[^\s-]\S*)"
        ),
    ),
    (
        "password",
        re.compile(rb"(?i)\b(?:sshpass\s+-p|redis-cli\b[^\n]*?\s-a)\s*(?P<val>" + _NOT_DONE + rb"\S+)"),
    ),
    # .netrc: `machine HOST login USER password SECRET` (`login USER password SECRET`, `default ...`)
    (
        "password",
        re.compile(
            rb"(?i)\b(?:machine\s+\S+\s+(?:login\s+\S+\s+)?|login\s+\S+\s+|default\s+)(?:password|passwd)\s+"
            rb"(?P<val>" + _NOT_DONE + rb"\S+)"
        ),
    ),
    # XML: <password>S</password>, <db:adminPassword>S</...>; .NET <add key="Db.Password" value="S"/>
    (
        "password",
        re.compile(rb"(?i)<(?:[\w:.-]*?)(?:" + _XML_WORDS + rb")s?(?:\s[^>]*)?>(?P<val>[^<\s][^<]*)</"),
    ),
    (
        "password",
        re.compile(
            rb"(?i)\bkey\s*=\s*[\"'][^\"']*?(?:"
            + _XML_WORDS
            + rb")s?[\"']\s+value\s*=\s*(?P<val>\"[^\"]+\"|'[^']+')"
        ),
    ),
    # Cookie and Set-Cookie headers: the whole value (session ids)
    (
        "token",
        re.compile(rb"(?i)^[ \t]*(?:set-)?cookie[ \t]*:[ \t]*(?P<val>" + _NOT_DONE + rb"[^\r\n]*[^\s])"),
    ),
    # crypt(3) password hashes: /etc/shadow, htpasswd (MD5, apr1, SHA-256/512, bcrypt, yescrypt, argon2)
    ("password", re.compile(rb"\$(?:1|2[abxy]?|5|6|y|apr1|argon2(?:id|i|d))\$(?P<val>[^\s:\"']+)")),
    (
        "password",
        re.compile(rb"(?i)\bcurl\b[^\n]*?\s(?:-u|--user)\s+[^\s:]+:(?P<val>" + _NOT_DONE + rb"\S+)"),
    ),
]
_ASSIGN = re.compile(rb"(?i)[\"']?" + _KEY + rb"[\"']?\s*(?:=>|:=|==|=|:)\s*" + _VALUE)
_FLAG = re.compile(rb"(?i)(?<![\w-])--?" + _KEY_BODY + rb"\s+(?!-)" + _VALUE)
_ENV_WORD = rb"(?:PASSWORD|PASSWD|PWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|CREDENTIALS?)"
_ENV_SPACE = re.compile(rb"\b(?P<key>(?:[A-Z][A-Z0-9_]*)?" + _ENV_WORD + rb"[A-Z0-9_]*)[ \t]+(?!-)" + _VALUE)
# A YAML key naming a secret with nothing after the colon (or a block scalar): the value follows.
_YAML_KEY = re.compile(
    rb"(?i)^(?P<indent>[ \t]*)(?:-[ \t]+)?[\"']?"
    + _KEY
    + rb"[\"']?[ \t]*:[ \t]*(?P<block>[|>][-+0-9]*)?[ \t]*\r?$"
)
_INDENT = re.compile(rb"^[ \t]*")

_PEM = rb"-----%s (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_PEM_BEGIN = re.compile(_PEM % b"BEGIN")
_PEM_END = re.compile(_PEM % b"END")
_PEM_ONE_LINE = re.compile(_PEM % b"BEGIN" + rb".*?" + _PEM % b"END")

# Which lines get looked at closely: a keyword, a URL, a header word or a PEM marker (lowercased),
# or a run of 20+ token characters (every detect-secrets token format has one: AKIA + 16, ghp_ + 36,
# a JWT's header, ...). Everything else is copied in bulk; the rules run on the lines picked.
_TRIGGER = re.compile(
    rb"pass|pwd|pw|token|secret|key|credential|bearer|basic|authorization|://|-----begin|contrase|"
    rb"mysql|mariadb|sshpass|redis-cli|curl|cookie|\$(?:1|2[abxy]?|5|6|y|apr1|argon2)\$"
)
_TOKENISH = re.compile(rb"[A-Za-z0-9_\-]{20,}")
PATTERN_NAMES = tuple(
    dict.fromkeys(
        [
            "private_key",
            *(name for name, _ in CONTEXT_RULES),
            *(name for name, _ in TOKEN_RULES),
            "password",
            "token",
            "overlong_line",
        ]
    )
)
_SEPARATORS = b" \t=:\"'"


def _marker(name: str) -> bytes:
    return b"[REDACTED " + name.encode() + b"]"


def _value_replacer(name: str, counts: Counter[str]) -> Callable[[re.Match[bytes]], bytes]:
    """Replace the `val` group, keeping its quotes; else the whole match less its edge separators."""
    marker = _marker(name)

    def replace(match: re.Match[bytes]) -> bytes:
        whole, offset = match.group(0), match.start()
        if "val" not in match.re.groupindex:
            lead = len(whole) - len(whole.lstrip(_SEPARATORS))
            trail = len(whole) - len(whole.rstrip(_SEPARATORS))
            if lead + trail >= len(whole) or whole.startswith(b"[REDACTED"):
                return whole
            counts[name] += 1
            return whole[:lead] + marker + whole[len(whole) - trail :]
        start, end = match.span("val")
        value = match.group("val")
        quote = value[:1] if value[:1] in (b'"', b"'") and len(value) > 1 else b""
        counts[name] += 1
        return whole[: start - offset] + quote + marker + quote + whole[end - offset :]

    return replace


def _keyword_name(key: bytes) -> str:
    low = key.lower()
    return "password" if any(w in low for w in (b"pass", b"pwd", b"pw", b"contrase")) else "token"


class Redactor:
    """Streams bytes through the rules; `counts` says how often each rule fired."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._in_key = False
        self._skipping = False  # inside an overlong line
        self._yaml_indent: int | None = None  # a secret's YAML value continues on lines deeper than this
        self._yaml_block = False
        self._subs = [(rx, _value_replacer(name, self.counts)) for name, rx in CONTEXT_RULES]
        self._tokens = [(rx, _value_replacer(name, self.counts)) for name, rx in TOKEN_RULES]

    def stream(self, src: IO[bytes], dst: IO[bytes]) -> None:
        """Copy `src` to `dst` redacted, in blocks of whole lines (at most ~2 * MAX_LINE in memory)."""
        pending = b""
        while chunk := src.read(CHUNK):
            if self._skipping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    continue
                self._skipping, chunk = False, chunk[newline + 1 :]
            data = pending + chunk if pending else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) >= MAX_LINE:
                self.counts["overlong_line"] += 1
                dst.write(b"[REDACTED overlong_line]\n")
                pending, self._skipping = b"", True
                continue
            pending = data[cut:]
            if cut:
                self._block(data[:cut], dst)
        if pending:
            self._block(pending, dst)

    def text(self, text: str) -> str:
        """A short message (e.g. an error from a node), redacted the same way."""
        out = io.BytesIO()
        self.stream(io.BytesIO(text.encode("utf-8", "replace")), out)
        return out.getvalue().decode("utf-8", "replace")

    def _block(self, data: bytes, dst: IO[bytes]) -> None:
        """Whole lines: untouched runs are written as they are, lines a rule may match go to _line."""
        pos, size, low = 0, len(data), data.lower()
        token, word = _TOKENISH.search(data), _TRIGGER.search(low)
        while pos < size:
            if self._in_key:
                end_marker = _PEM_END.search(data, pos)
                if end_marker is None:
                    return  # the whole block is inside the key
                self._in_key = False
                end = _line_end(data, end_marker.end())
                rest = data[end_marker.end() : end]
                if rest.strip():
                    dst.write(self._line(rest))
                pos = end
                continue
            if self._yaml_indent is not None:  # the line after a secret's YAML key: always looked at
                end = _line_end(data, pos)
                dst.write(self._line(data[pos:end]))
                pos = end
                continue
            # Each search resumes only once passed: a block without a word would be rescanned per line.
            if token is not None and token.start() < pos:
                token = _TOKENISH.search(data, pos)
            if word is not None and word.start() < pos:
                word = _TRIGGER.search(low, pos)
            hits = [m.start() for m in (word, token) if m is not None]
            if not hits:
                dst.write(data[pos:])
                return
            hit = min(hits)
            newline = data.rfind(b"\n", pos, hit)
            start = pos if newline < 0 else newline + 1
            end = _line_end(data, hit)
            if start > pos:
                dst.write(data[pos:start])
            dst.write(self._line(data[start:end]))
            pos = end

    def _line(self, line: bytes) -> bytes:
        """One line that may hold a secret; what may be shown of it (possibly b"")."""
        if self._yaml_indent is not None:
            body = line.rstrip(b"\r\n")
            indent = len(_INDENT.match(body).group(0))  # type: ignore[union-attr]
            if not body.strip():
                return line  # blank lines inside or before the value
            if indent > self._yaml_indent:
                if not self._yaml_block:
                    self._yaml_indent = None
                self.counts["password"] += 1
                return body[:indent] + _marker("password") + line[len(body) :]
            self._yaml_indent = None
        worded = _TRIGGER.search(line.lower()) is not None
        if worded:
            line, n = _PEM_ONE_LINE.subn(b"[REDACTED private_key]", line)
            if n:
                self.counts["private_key"] += n
            for rx, replace in self._subs:
                line = rx.sub(replace, line)
        if _TOKENISH.search(line):
            for rx, replace in self._tokens:
                line = rx.sub(replace, line)
        if worded:
            line = _ASSIGN.sub(self._keyword, line)
            line = _FLAG.sub(self._flag, line)
            line = _ENV_SPACE.sub(self._keyword, line)
        yaml = _YAML_KEY.match(line.rstrip(b"\n"))
        if yaml is not None and _short_ok(yaml.group("key")):
            self._yaml_indent, self._yaml_block = len(yaml.group("indent")), bool(yaml.group("block"))
        begin = _PEM_BEGIN.search(line)
        if begin is None:
            return line
        self._in_key = True
        self.counts["private_key"] += 1
        newline = b"\n" if line.endswith(b"\n") else b""
        return line[: begin.start()] + b"[REDACTED private_key]" + newline

    def _keyword(self, match: re.Match[bytes]) -> bytes:
        key, value = match.group("key"), match.group("val")
        if not _short_ok(key) or _ABOUT_A_SECRET.search(key):
            return match.group(0)  # a word that only contains pass/pwd; a property of a secret
        if key.upper() in (b"PWD", b"OLDPWD") and value.startswith(b"/"):
            return match.group(0)  # the shell's working directory
        return _value_replacer(_keyword_name(key), self.counts)(match)

    def _flag(self, match: re.Match[bytes]) -> bytes:
        """`--password X`, `--db-token X`: the flag ends with the word (not --pass-through mode)."""
        if not re.search(rb"(?i)(?:" + _WORDS + rb")s?$", match.group("key")):
            return match.group(0)
        return self._keyword(match)


def _short_ok(key: bytes) -> bool:
    """A key whose secret word is a short one (pass, pwd, pw) counts only where that word stands on
    its own (db_pass, PWD, "pw"), not inside another word (compass, bypass, stopwatch)."""
    return _LONG.search(key) is not None or _SHORT_ALONE.search(key) is not None


def _line_end(data: bytes, at: int) -> int:
    newline = data.find(b"\n", at)
    return len(data) if newline < 0 else newline + 1


def redact_text(text: str) -> str:
    return Redactor().text(text)
