"""flows/report.py `shell_word`: a name quoted into a command an operator copies from one terminal line
(`prefect gcl update NAME`) is all printable and reads back, in bash, as the very name (adv43)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from flows.report import shell_word

NAMES = ["clusters", "a b", "it's", "back\\slash", "x\x1b]0;owned\x07\x1b[2J", "a\nb", "tab\there", "\u2028"]


@pytest.mark.parametrize("name", NAMES)
def test_a_shell_word_is_printable_and_bash_reads_back_the_name(name: str) -> None:
    word = shell_word(name)
    assert word.isprintable(), repr(word)
    bash = shutil.which("bash")
    assert bash is not None
    said = subprocess.run([bash, "-c", f"printf %s {word}"], capture_output=True, text=True, check=True)
    assert said.stdout == name


EVERY = [chr(code) for code in range(1, 256)] + [
    "\u202e",  # right-to-left override
    "\u2066",  # left-to-right isolate
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte order mark
    "\u0301",  # a combining mark (printable: kept as it is)
    "\U0001f600",
    "\udcff",  # an undecodable byte of UPKEEP_CLUSTER_LIMIT, as os.environ hands it over
]


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_every_character_reads_back_in_bash_in_any_locale(locale: str) -> None:
    """adv46: U+0080-U+00A0 and U+00AD came out as `\\xHH`, which bash reads as one byte, not the
    character's UTF-8; `\\uHHHH` is read back only in a UTF-8 locale. (NUL cannot be in a shell word.)"""
    bash = shutil.which("bash")
    assert bash is not None
    wrong = []
    for ch in EVERY:
        name = f"n{ch}z"
        word = shell_word(name)
        said = subprocess.run(
            [bash, "-c", f"printf %s {word}"],
            capture_output=True,
            env={"LC_ALL": locale, "PATH": "/usr/bin:/bin"},
            check=True,
        )
        if not word.isprintable() or said.stdout != name.encode("utf-8", "surrogateescape"):
            wrong.append((name, word, said.stdout))
    assert not wrong, wrong
