"""The lab is real: sshd per node, nginx over TLS, the agent over SSH. No mocks anywhere."""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import stat
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
import yaml

from inventory.importer import load_inventory
from tests.support.labs import running_lab
from upkeep.lab import Lab, LabError, agent, procs

pytestmark = pytest.mark.lab

PACKAGE = "upkeep-product-9.10.0.tar.gz"
HEALTH_DELAY = 0.6


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(
        tmp_path_factory.mktemp("lab"), clusters=2, nodes=3, upgrade_seconds=0.1, health_delay=HEALTH_DELAY
    ) as lab:
        yield lab


def _node(lab: Lab, index: int) -> dict[str, Any]:
    node: dict[str, Any] = lab.status()["nodes"][index]
    return node


def connect(lab: Lab, node: dict[str, Any], known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or lab.settings_overrides()["known_hosts"]))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        node["address"],
        port=node["port"],
        username=node["user"],
        key_filename=lab.settings_overrides()["ssh_key"],
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 15) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out.strip(), err.strip()


def index_entry(lab: Lab, version: str) -> dict[str, Any]:
    entries = json.loads((lab.fileserver_root / "releases" / "index.json").read_text())
    return next(e for e in entries if e["version"] == version)


def test_status_inventory_and_secrets(lab: Lab) -> None:
    status = lab.status()
    assert status["up"] and status["fileserver"]["running"] and status["jump"]["running"]
    assert [n["hostname"] for n in status["nodes"]][:4] == [
        "acme-c1-n1",
        "acme-c1-n2",
        "acme-c1-n3",
        "globex-c2-n1",
    ]
    assert all(n["running"] and n["version"] == "9.8.0" and n["fault"] is None for n in status["nodes"])
    password = lab.settings_overrides()["fileserver_password"]
    assert password and password not in json.dumps(status)
    assert stat.S_IMODE((lab.root / "lab.json").stat().st_mode) == 0o600
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    assert [c["name"] for c in inventory["customers"]] == ["acme", "globex"]
    cluster = inventory["customers"][1]["clusters"][0]
    assert cluster["name"] == "globex-c2" and cluster["access"] == {"type": "direct"}
    assert cluster["nodes"][0]["port"] == status["nodes"][3]["port"]
    assert {r["version"]: r["from"] for r in inventory["releases"]}["9.10.0"] == ["9.8.0", "9.9.0"]
    with pytest.raises(LabError, match="already up"):
        lab.up()


def test_every_node_answers_over_verified_ssh(lab: Lab) -> None:
    def version(node: dict[str, Any]) -> tuple[int, str, str]:
        client = connect(lab, node)
        try:
            return run(client, "upkeep-agent version")
        finally:
            client.close()

    nodes = lab.status()["nodes"]
    with ThreadPoolExecutor(len(nodes)) as pool:  # all at once, as the scheduler would
        assert list(pool.map(version, nodes)) == [(0, "9.8.0", "")] * len(nodes)


def test_unknown_host_key_is_rejected(lab: Lab, tmp_path: Path) -> None:
    node = _node(lab, 0)
    partial = tmp_path / "known_hosts"
    lines = Path(lab.settings_overrides()["known_hosts"]).read_text().splitlines()
    partial.write_text("\n".join(line for line in lines if f":{node['port']} " not in line) + "\n")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(lab, node, known_hosts=partial)
    # Same name, another node's key: a swapped host key is refused too.
    other = next(line for line in lines if f":{node['port']} " not in line).split(" ", 1)[1]
    partial.write_text(f"[127.0.0.1]:{node['port']} {other}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab, node, known_hosts=partial)


def test_jump_host_forwards_to_a_node(lab: Lab) -> None:
    status = lab.status()
    jump = connect(lab, status["jump"])
    try:
        node = status["nodes"][5]
        transport = jump.get_transport()
        assert transport is not None
        channel = transport.open_channel("direct-tcpip", ("127.0.0.1", node["port"]), ("127.0.0.1", 0))
        client = paramiko.SSHClient()
        client.load_host_keys(status["known_hosts"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            "127.0.0.1",
            port=node["port"],
            username=node["user"],
            key_filename=status["ssh_key"],
            sock=channel,
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
        assert run(client, "upkeep-agent version")[1] == "9.8.0"
        client.close()
    finally:
        jump.close()


def test_sftp_stage_upgrade_and_health(lab: Lab) -> None:
    node = _node(lab, 3)
    entry = index_entry(lab, "9.10.0")
    client = connect(lab, node)
    try:
        with client.open_sftp() as sftp:
            sftp.put(str(lab.fileserver_root / entry["package"]), PACKAGE)  # relative: lands in incoming/
        assert (lab.node_dir(node["hostname"]) / "incoming" / PACKAGE).is_file()
        code, _, err = run(client, f"upkeep-agent stage {PACKAGE} {'0' * 64}")
        assert code == 2 and err.startswith("checksum mismatch: expected 000")
        assert run(client, "upkeep-agent upgrade 9.10.0") == (4, "", "not staged: 9.10.0")
        assert run(client, f"upkeep-agent stage {PACKAGE} {entry['sha256']}") == (0, "staged 9.10.0", "")
        assert run(client, "upkeep-agent upgrade 9.x")[0] == 64
        # "starting" right after the upgrade, however long this machine takes to ask: the node's health
        # delay is an hour while we ask (the agent reads agent.json on every command), then its own.
        agent_json = lab.node_dir(node["hostname"]) / "agent.json"
        config = json.loads(agent_json.read_text())
        agent_json.write_text(json.dumps({**config, "health_delay": 3600}))
        assert run(client, "upkeep-agent upgrade 9.10.0") == (0, "upgraded 9.8.0 -> 9.10.0", "")
        assert run(client, "upkeep-agent health") == (1, "starting", "")
        agent_json.write_text(json.dumps(config))
        answers = _health_until_healthy(client)
        assert set(answers[:-1]) <= {(1, "starting", "")} and answers[-1] == (0, "healthy", "")
        assert run(client, "upkeep-agent upgrade 9.10.0") == (0, "already at 9.10.0", "")
        assert run(client, "upkeep-agent version")[1] == "9.10.0"
    finally:
        client.close()
    log = lab.upgrade_log(node["hostname"])
    assert len(log) == 1 and (log[0]["from"], log[0]["to"]) == ("9.8.0", "9.10.0")
    assert datetime.fromisoformat(log[0]["at"]).tzinfo is not None
    assert lab.status()["nodes"][3]["version"] == "9.10.0"


def _health_until_healthy(client: paramiko.SSHClient, timeout: float = 30) -> list[tuple[int, str, str]]:
    """`upkeep-agent health` asked until it says healthy (the node's health delay after its upgrade,
    however long the machine takes to get there); every answer, in order."""
    answers = [run(client, "upkeep-agent health")]
    deadline = time.monotonic() + timeout
    while answers[-1][0] != 0 and time.monotonic() < deadline:
        time.sleep(HEALTH_DELAY / 10)
        answers.append(run(client, "upkeep-agent health"))
    return answers


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _stage(lab: Lab, client: paramiko.SSHClient) -> str:
    entry = index_entry(lab, "9.10.0")
    with client.open_sftp() as sftp:
        sftp.put(str(lab.fileserver_root / entry["package"]), PACKAGE)
    return f"upkeep-agent stage {PACKAGE} {entry['sha256']}"


def test_faults_fail_unhealthy_disk_full(lab: Lab) -> None:
    node = _node(lab, 4)
    host = node["hostname"]
    client = connect(lab, node)
    try:
        stage = _stage(lab, client)
        lab.fault(host, "disk-full")
        assert run(client, "upkeep-agent disk") == (0, "0", "")
        assert run(client, stage) == (3, "", "No space left on device")
        lab.fault(host, "clear")
        assert int(run(client, "upkeep-agent disk")[1]) > 0
        assert run(client, stage)[0] == 0
        lab.fault(host, "fail-upgrade")
        assert run(client, "upkeep-agent upgrade 9.10.0") == (1, "", "upgrade failed: simulated fault")
        assert run(client, "upkeep-agent version")[1] == "9.8.0"
        assert lab.upgrade_log(host) == []
        lab.fault(host, "unhealthy")
        assert run(client, "upkeep-agent health") == (1, "unhealthy: simulated fault", "")
        assert lab.status()["nodes"][4]["fault"] == "unhealthy"
        lab.fault(host, "clear")
        assert run(client, "upkeep-agent health") == (0, "healthy", "")
    finally:
        client.close()
    with pytest.raises(LabError, match="valid: fail-upgrade"):
        lab.fault(host, "meltdown")
    with pytest.raises(LabError, match="unknown node"):
        lab.fault("nosuch-c9-n9", "down")


def test_hang_then_down_then_clear(lab: Lab) -> None:
    node = _node(lab, 5)
    host = node["hostname"]
    client = connect(lab, node)
    try:
        assert run(client, _stage(lab, client))[0] == 0
        lab.fault(host, "hang")
        _, stdout, _ = client.exec_command("upkeep-agent upgrade 9.10.0")
        product_log = lab.node_dir(host) / "logs" / "product.log"
        deadline = time.monotonic() + 30  # until the agent says it hangs, not a guess at how long it takes
        while "hanging (simulated fault)" not in _text(product_log) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "upgrade 9.10.0: hanging (simulated fault)" in _text(product_log)
        assert not stdout.channel.exit_status_ready()  # still "upgrading"
        lab.fault(host, "down")  # a node outage takes the hung agent and the session with it
        deadline = time.monotonic() + 5
        while not stdout.channel.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stdout.channel.closed
    finally:
        client.close()
    status = lab.status()["nodes"][5]
    assert status["fault"] == "down" and not status["running"]
    with pytest.raises(OSError):  # paramiko's NoValidConnectionsError: connection refused
        connect(lab, node)
    lab.fault(host, "clear")
    client = connect(lab, node)  # same port, same host key: known_hosts still verifies
    try:
        assert run(client, "upkeep-agent version") == (0, "9.8.0", "")
    finally:
        client.close()
    assert lab.upgrade_log(host) == []


def test_logs_collect_over_ssh(lab: Lab, tmp_path: Path) -> None:
    node = _node(lab, 0)
    since = datetime.now(UTC) - timedelta(seconds=1)
    client = connect(lab, node)
    try:
        run(client, "upkeep-agent health")
        until = datetime.now(UTC) + timedelta(seconds=1)
        code, path, _ = run(
            client, f"upkeep-agent logs collect --since {since.isoformat()} --until {until.isoformat()}"
        )
        assert code == 0 and f"/outgoing/diag-{node['hostname']}-" in path
        with client.open_sftp() as sftp:
            sftp.get(path, str(tmp_path / "diag.tar.gz"))
    finally:
        client.close()
    with tarfile.open(tmp_path / "diag.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["metrics.json", "product.log"]
        lines = tar.extractfile("product.log").read().decode().splitlines()  # type: ignore[union-attr]
        metrics = json.loads(tar.extractfile("metrics.json").read())  # type: ignore[union-attr]
    assert any("health -> 0 healthy" in line for line in lines)
    assert all(since <= datetime.fromisoformat(line.split()[0]) <= until for line in lines)
    assert metrics["version"] == "9.8.0" and metrics["hostname"] == node["hostname"]


def test_fileserver_auth_tls_range_and_put_once(lab: Lab) -> None:
    o = lab.settings_overrides()
    url, auth = o["fileserver_url"], (o["fileserver_user"], o["fileserver_password"])
    entry = index_entry(lab, "9.10.0")
    verify = ssl.create_default_context(cafile=o["fileserver_ca"])  # only the lab CA, nothing else
    with httpx.Client(base_url=url, verify=verify, timeout=10) as http:
        assert http.get(f"/{entry['package']}").status_code == 401
        assert http.get(f"/{entry['package']}", auth=(auth[0], "wrong")).status_code == 401
        got = http.get(f"/{entry['package']}", auth=auth)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == entry["sha256"]
        part = http.get(f"/{entry['package']}", auth=auth, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == got.content[100:200]
        assert http.get("/releases/", auth=auth).status_code == 404  # no listings
        assert http.put("/releases/evil.tar.gz", auth=auth, content=b"x").status_code == 405
        target = f"/support/acme/case-1/diag-{time.time_ns()}.tar.gz"
        assert http.put(target, content=b"first").status_code == 401
        assert http.put(target, auth=auth, content=b"first").status_code == 201
        assert http.put(target, auth=auth, content=b"second").status_code == 409
        assert http.get(target, auth=auth).content == b"first"
        assert http.delete(target, auth=auth).status_code == 405
    assert (lab.fileserver_root / target.lstrip("/")).read_bytes() == b"first"


def test_settings_overrides_build_settings(lab: Lab) -> None:
    from upkeep.settings import Settings

    settings = Settings(home=lab.root / "home", **lab.settings_overrides())
    assert settings.fileserver_url.startswith("https://127.0.0.1:")
    assert settings.fileserver_password.get_secret_value() == lab.settings_overrides()["fileserver_password"]


def test_failed_start_cleans_up(tmp_path: Path) -> None:
    broken = Lab(tmp_path / "has space")  # sshd_config cannot carry this path: start must fail cleanly
    with pytest.raises(LabError, match="must not contain whitespace"):
        broken.up(clusters=1, nodes=1)
    assert not broken.status()["up"]


def test_clusters_added_to_a_running_lab_are_whole_and_leave_the_others_alone(tmp_path: Path) -> None:
    """`add_clusters` (the suite's session labs grow module by module): the new nodes answer over
    verified SSH, known_hosts and the inventory hold them as a lab started that size would, the running
    nodes keep their daemons, and `down` stops the added ones too."""
    with running_lab(tmp_path / "grown", clusters=1, nodes=2, upgrade_seconds=0.1, health_delay=0.1) as grown:
        before = {n["hostname"]: n["pid"] for n in grown.status()["nodes"]}
        status = grown.add_clusters(2)
        nodes = status["nodes"]
        assert [n["hostname"] for n in nodes] == [
            "acme-c1-n1", "acme-c1-n2", "globex-c2-n1", "globex-c2-n2", "initech-c3-n1", "initech-c3-n2",
        ]  # fmt: skip
        assert all(n["running"] for n in nodes)
        assert {n["hostname"]: n["pid"] for n in nodes[:2]} == before

        def version(node: dict[str, Any]) -> tuple[int, str, str]:
            client = connect(grown, node)  # verified against the lab's known_hosts
            try:
                return run(client, "upkeep-agent version")
            finally:
                client.close()

        with ThreadPoolExecutor(len(nodes)) as pool:
            assert list(pool.map(version, nodes)) == [(0, "9.8.0", "")] * len(nodes)
        doc = load_inventory(grown.inventory_path)
        clusters = [(c.name, c.ring, [n.port for n in c.nodes]) for cu in doc.customers for c in cu.clusters]
        assert sorted(clusters) == sorted(
            (name, "broad", [n["port"] for n in nodes if n["cluster"] == name])
            for name in ("acme-c1", "globex-c2", "initech-c3")
        )
        assert [r.version for r in doc.releases], "the releases stay in the inventory"
        pids = [n["pid"] for n in nodes]
        with pytest.raises(LabError, match="at least one"):
            grown.add_clusters(0)
    assert not [pid for pid in pids if procs.alive(pid)]
    with pytest.raises(LabError, match="is not up"):
        grown.add_clusters(1)


def test_a_session_lab_that_cannot_grow_says_why_in_one_line_and_keeps_its_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module's growth that fails (here: the added sshd never answers, as on a port clash) errored
    its first test with an 80-line traceback through the hook, and every later test of the module with
    'no untouched cluster left; give it more', a constant to raise that does not exist. Now the cause
    is one line, and the tests left without a cluster repeat it."""
    from types import SimpleNamespace

    from tests.support import labs
    from upkeep.lab import sshd

    with running_lab(tmp_path / "stuck", clusters=2, nodes=1, upgrade_seconds=0.1, health_delay=0.1) as stuck:
        before = stuck.status()["nodes"]
        growing = labs.Growing("lab", ("fresh_cluster",), stuck, spare=2)
        monkeypatch.setitem(labs._growing, "stuck", growing)  # what take_cluster looks in

        def silent(spec: Any, port: int, launcher: Any) -> int:
            raise sshd.SshdError(f"{spec.name}: sshd on port {port} did not answer\nlog tail line")

        monkeypatch.setattr(sshd, "await_ready", silent)
        module = [SimpleNamespace(path=tmp_path / "test_later.py", fixturenames=["fresh_cluster"])] * 3
        why = growing.provide_for(module)  # type: ignore[arg-type]
        assert why is not None and "\n" not in why, why
        assert why.startswith("the session lab 'lab' could not grow for test_later.py (2 clusters short)")
        assert "did not answer" in why
        assert stuck.status()["nodes"] == before  # the added nodes are gone, the running ones stay
        assert labs.take_cluster(stuck) == before[0]["cluster"]  # the one untouched cluster left
        with pytest.raises(pytest.fail.Exception, match="no untouched cluster left: the session lab 'lab'"):
            labs.take_cluster(stuck)
    assert not [n for n in before if procs.alive(n["pid"])]


def test_down_leaves_no_process(lab: Lab) -> None:
    # Runs last in this module (pytest keeps file order); the fixture's own down() is then a no-op.
    status = lab.status()
    pids = [n["pid"] for n in status["nodes"]] + [status["jump"]["pid"], status["fileserver"]["pid"]]
    assert all(pids)
    lab.down()
    assert not [pid for pid in pids if procs.alive(pid)]
    after = lab.status()
    assert not after["up"] and not any(n["running"] for n in after["nodes"])
    lab.down()  # idempotent


# -- the agent alone, in-process: no sshd needed -------------------------------------------------------
def test_agent_collect_filters_by_time_and_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "agent.json").write_text(
        json.dumps({"hostname": "n1", "upgrade_seconds": 0, "health_delay": 0})
    )
    (tmp_path / "version").write_text("9.8.0\n")
    base = datetime(2030, 1, 1, tzinfo=UTC)
    log = io.StringIO()
    for minute in range(10):
        log.write(f"{agent.stamp(base + timedelta(minutes=minute))} n1 app: minute {minute}\n")
        log.write("  continuation of the line above\n")
    log.write("2030-01-01T00:04:30Z n1 other-format: still parsed\n")
    (tmp_path / "logs" / "product.log").write_text(log.getvalue())
    monkeypatch.setenv("UPKEEP_NODE_DIR", str(tmp_path))
    since, until = (base + timedelta(minutes=3)).isoformat(), "2030-01-01T00:05:00Z"
    assert agent.main(["logs", "collect", "--since", since, "--until", until]) == 0
    bundle = Path(capsys.readouterr().out.strip())
    with tarfile.open(bundle) as tar:
        picked = tar.extractfile("product.log").read().decode()  # type: ignore[union-attr]
    assert [line.split(": ", 1)[1] for line in picked.splitlines() if "continuation" not in line] == [
        "minute 3",
        "minute 4",
        "minute 5",
        "still parsed",
    ]
    assert picked.count("continuation") == 3
    assert agent.main(["logs", "collect", "--since", "2030-01-01T00:00:00", "--until", until]) == 64  # naive
    assert agent.main(["nonsense"]) == 64
    monkeypatch.delenv("UPKEEP_NODE_DIR")
    assert agent.main(["version"]) == 78
