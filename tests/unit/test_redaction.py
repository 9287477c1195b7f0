"""Secret redaction for diagnostics bundles: every pattern, PEM blocks, chunk edges, flat memory."""

from __future__ import annotations

import io
import tracemalloc

import pytest

from tasks.diagnostics import (
    MAX_LINE,
    PATTERN_NAMES,
    DiagnosticsRefused,
    Redactor,
    redact_text,
    safe_segment,
    support_path,
)
from tasks.fileserver import CHUNK

KEY_BODY = [b"MIIEpAIBAAKCAQEA7s1ec2Ret" + bytes([65 + i % 26]) * 40 for i in range(5)]


def redact(data: bytes) -> tuple[bytes, dict[str, int]]:
    redactor = Redactor()
    out = io.BytesIO()
    redactor.stream(io.BytesIO(data), out)
    return out.getvalue(), {k: v for k, v in redactor.counts.items() if v}


@pytest.mark.parametrize(
    ("line", "secret", "pattern"),
    [
        (b"login user=bob password=hunter2 ok", b"hunter2", "password"),
        (b'{"db_password": "correct horse battery"}', b"correct horse", "password"),
        (b"PASSWD: 'p a s s'", b"p a s s", "password"),
        (b"exec tool --password s3cr3t-pw --verbose", b"s3cr3t-pw", "password"),
        (b"dsn=postgresql://admin:pg-S3cret@db.local:5432/app", b"pg-S3cret", "password"),
        (b"GET /v1 Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", b"eyJhbGci", "bearer"),
        (b"proxy Authorization: Basic dXNlcjpwYXNzd29yZA==", b"dXNlcjpwYXNzd29yZA", "basic_auth"),
        (b"using key AKIAIOSFODNN7EXAMPLE for s3", b"AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        (b"sts ASIAY34FZKBOKMUTVV7A expires", b"ASIAY34FZKBOKMUTVV7A", "aws_access_key"),
        (b"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", b"wJalrXUtnFEMI", "token"),
        (b'{"access_token":"ya29.a0AfH6SMB","expires":3600}', b"ya29.a0AfH6SMB", "token"),
        (b"X-Api-Key: k-123456789", b"k-123456789", "token"),
        (b"client_secret=abc123def", b"abc123def", "token"),
        (b"run --token tkn_live_42", b"tkn_live_42", "token"),
    ],
)
def test_each_pattern_removes_the_secret_and_counts_once(line: bytes, secret: bytes, pattern: str) -> None:
    out, counts = redact(b"before\n" + line + b"\nafter\n")
    assert secret not in out
    assert f"[REDACTED {pattern}]".encode() in out
    assert counts == {pattern: 1}
    assert out.startswith(b"before\n") and out.endswith(b"\nafter\n")


def test_text_without_secrets_is_copied_byte_for_byte() -> None:
    data = b"".join(
        [
            b"2026-11-23T10:00:00.000000+00:00 n1 app[1]: monkey keyboard passage basically fine\n",
            b"\xff\xfe not utf-8 \x00 at all\n",
            b"a url https://example.com/path?x=1 without credentials\n",
            b"last line without newline",
        ]
    )
    assert redact(data) == (data, {})


def test_a_pem_private_key_block_goes_whole_and_the_rest_stays() -> None:
    block = [b"config loaded; key -----BEGIN RSA PRIVATE KEY-----\n", *(b + b"\n" for b in KEY_BODY)]
    block.append(b"-----END RSA PRIVATE KEY----- then token=abc\n")
    out, counts = redact(b"one\n" + b"".join(block) + b"two\n")
    assert out == b"one\nconfig loaded; key [REDACTED private_key]\n then token=[REDACTED token]\ntwo\n"
    assert counts == {"private_key": 1, "token": 1}
    for body in KEY_BODY:
        assert body not in out


def test_pem_variants_on_one_line_and_openssh_and_pgp() -> None:
    data = b"".join(
        [
            b'{"key": "-----BEGIN PRIVATE KEY-----\\nMIIBVQIBADAN\\n-----END PRIVATE KEY-----"}\n',
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt\n-----END OPENSSH PRIVATE KEY-----\n",
            b"-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0AAAAA\n-----END PGP PRIVATE KEY BLOCK-----\n",
            b"-----BEGIN CERTIFICATE-----\nMIIBcertificate\n-----END CERTIFICATE-----\n",
        ]
    )
    out, counts = redact(data)
    assert counts == {"private_key": 3}
    for leaked in (b"MIIBVQIBADAN", b"b3BlbnNzaC1rZXkt", b"lQOYBF0AAAAA"):
        assert leaked not in out
    assert b"MIIBcertificate" in out  # certificates are public


def test_an_unterminated_key_drops_the_rest_of_the_file() -> None:
    out, counts = redact(b"keep\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\nmore\n")
    assert out == b"keep\n[REDACTED private_key]\n"
    assert counts == {"private_key": 1}


def test_already_redacted_values_are_not_counted_twice() -> None:
    out, counts = redact(b'aws_access_key_id=AKIAIOSFODNN7EXAMPLE password_token="x y"\n')
    assert counts == {"aws_access_key": 1, "password": 1}
    assert out == b'aws_access_key_id=[REDACTED aws_access_key] password_token="[REDACTED password]"\n'


def test_secrets_straddling_read_chunks_are_found() -> None:
    filler = b"x" * 99 + b"\n"
    count = CHUNK // len(filler)
    pad = b"p" * (CHUNK - count * len(filler) - 17) + b"\n"
    data = filler * count + pad + b"password=chunkedge\n"  # the secret crosses the first 1 MiB read
    assert len(filler * count + pad) + len(b"password=") < CHUNK < len(data) - 2
    data += b"-----BEGIN PRIVATE KEY-----\n" + b"y" * 60 + b"\n-----END PRIVATE KEY-----\n"
    data += filler * 20_000 + b"token=last"
    out, counts = redact(data)
    assert counts == {"password": 1, "private_key": 1, "token": 1}
    assert b"chunkedge" not in out and b"y" * 60 not in out and b"token=last" not in out
    assert out.count(filler) == count + 20_000 and pad in out


def test_overlong_lines_are_dropped_whole() -> None:
    data = b"short\n" + b"A" * (2 * MAX_LINE + 5) + b" password=x\nnext\n"
    out, counts = redact(data)
    assert out == b"short\n[REDACTED overlong_line]\nnext\n"
    assert counts == {"overlong_line": 1}


class _Generated(io.RawIOBase):
    """`total` bytes of log lines made on the fly, one planted secret per block: never all in memory."""

    def __init__(self, total: int) -> None:
        lines = [b"2026-11-23T10:00:00.000000+00:00 n1 app[7]: request %07d ok\n" % i for i in range(6000)]
        self.block = b"".join(lines) + b"2026-11-23T10:00:00.000000+00:00 n1 app[7]: password=hunter2\n"
        self.left = total

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), len(self.block), self.left)
        buffer[:size] = self.block[:size]
        self.left -= size
        # Rotate so the next read continues the block where this one stopped.
        self.block = self.block[size:] + self.block[:size]
        return size


class _Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.size += len(data)
        return len(data)


def test_memory_stays_flat_on_a_large_stream() -> None:
    total = 48 << 20
    source, sink, redactor = io.BufferedReader(_Generated(total)), _Sink(), Redactor()
    tracemalloc.start()
    try:
        redactor.stream(source, sink)  # type: ignore[arg-type]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    blocks = total // len(_Generated(0).block)
    assert redactor.counts["password"] in (blocks, blocks + 1)
    assert total < sink.size < total * 1.01
    assert peak < 8 * MAX_LINE, f"peak {peak / 1e6:.1f} MB while redacting {total / 1e6:.0f} MB"


def test_messages_are_redacted_too() -> None:
    assert (
        redact_text("agent: bad config password=hunter2") == "agent: bad config password=[REDACTED password]"
    )


def test_pattern_names_are_stable() -> None:
    """The names are the bundle manifest's redaction counts: ours, then detect-secrets' token types."""
    assert PATTERN_NAMES[:5] == ("private_key", "bearer", "basic_auth", "token", "password")
    assert PATTERN_NAMES[-1] == "overlong_line"
    assert {"aws_access_key", "github_token", "slack_token", "jwt", "stripe_access_key"} <= set(PATTERN_NAMES)
    assert len(PATTERN_NAMES) == len(set(PATTERN_NAMES))


@pytest.mark.parametrize(
    "value",
    ["../../etc", "..", "a/b", "/abs", "a b", "x;rm -rf ~", "$(id)", "`id`", "a|b", "a&b", "", "-rf",
     ".hidden", "ok\n", "é"],
)  # fmt: skip
def test_path_segments_refuse_traversal_and_shell_characters(value: str) -> None:
    with pytest.raises(DiagnosticsRefused):
        safe_segment(value, "customer")


def test_support_path() -> None:
    assert support_path("acme", "CASE-7", "diag-c1-20261123T100000Z-abc123") == (
        "support/acme/CASE-7/diag-c1-20261123T100000Z-abc123.tar.gz"
    )
    with pytest.raises(DiagnosticsRefused, match=r"customer '\.\./\.\./etc'"):
        support_path("../../etc", "CASE-7", "b")
