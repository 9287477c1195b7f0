"""Secret forms found missing by the adversarial pass on issue #14 (not in the corpus when it was
measured): each must lose its secret, and the near-miss lines next to them must survive unchanged.
Fake values of each vendor's documented shape."""

from __future__ import annotations

import pytest

from tasks.redaction import redact_text

V = "Zq8vLm3Kp9Xw2Rt7"  # the planted value

LEAKED = {
    ".netrc line": (f"machine files.example.com login deploy password {V}", V),
    ".netrc passwd": (f"machine files.example.com login deploy passwd {V}", V),
    "XML element": (f"<password>{V}</password>", V),
    "XML element with a prefix": (f"  <db:adminPassword>{V}</db:adminPassword>", V),
    ".NET appSettings": (f'<add key="Db.Password" value="{V}" />', V),
    "Cookie header": (f"Cookie: theme=dark; sessionid={V}", V),
    "Set-Cookie header": (f"set-cookie: sessionid={V}; Path=/; HttpOnly", V),
    "signing key": (f"signing_key={V}", V),
    "encryption key in YAML": (f"encryption_key: {V}", V),
    "private key value": (f"private_key = {V}", V),
    "master key": (f"MASTER_KEY={V}", V),
    "tab-separated env dump": (f"PASSWORD\t{V}", V),
    "shadow hash": (
        "root:$6$Zq8vLm3K$p9Xw2Rt7Zq8vLm3Kp9Xw2Rt7Zq8vLm3Kp9Xw2Rt7/.:19000:0:99999:7:::",
        "p9Xw2Rt7",
    ),
    "htpasswd apr1": ("admin:$apr1$Zq8vLm3K$p9Xw2Rt7Zq8vLm3Kp9Xw2.", "p9Xw2Rt7"),
    "bcrypt": ("admin:$2y$10$Zq8vLm3Kp9Xw2Rt7Zq8vLeZq8vLm3Kp9Xw2Rt7Zq8vLm3Kp9Xw2R", "Zq8vLm3Kp9"),
    "npm token alone": ("NPM_CONFIG_USERCONFIG ok; npm_Zq8vLm3Kp9Xw2Rt7Zq8vLm3Kp9Xw2Rt7abcd", V),
    "OpenAI project key": ("llm sk-proj-Zq8vLm3Kp9Xw2Rt7Zq8vLm3Kp9Xw2Rt7Zq8vLm3Kp9Xw", V),
    "Vault token": ("vault login hvs.CAESIZq8vLm3Kp9Xw2Rt7Zq8vLm3Kp9Xw2Rt7abcd", V),
    "DigitalOcean token": ("doctl dop_v1_" + "0a1b2c3d4e5f" * 5 + "0a1b", "0a1b2c3d4e5f"),
    "Shopify token": ("shop shpat_" + "0a1b2c3d4e5f6a7b" * 2, "0a1b2c3d4e5f"),
}

SURVIVE = [
    "password: (none set)",
    "machine learning model loaded",
    "login shell is /bin/bash; password aging disabled",
    "<passwordPolicy>strict</passwordPolicy>",
    '<add key="PasswordMinLength" value="12" />',
    "cookie policy: strict",
    "private key file: /etc/ssl/key.pem",
    "price $6 per node, $5 per seat",
    "npm_config_cache=/tmp/npm",
]


@pytest.mark.parametrize("form", list(LEAKED))
def test_the_secret_is_gone(form: str) -> None:
    text, secret = LEAKED[form]
    assert secret not in redact_text(text), redact_text(text)


@pytest.mark.parametrize("line", SURVIVE)
def test_the_near_miss_survives(line: str) -> None:
    assert redact_text(line) == line
