"""The Ansible adapter's stages without a host: the private data dir, playbook names, redaction and
event batching."""

import json
import stat
import time
from pathlib import Path

import pytest

from slm_project.deployments.runners import ansible

ANSIBLE_DIR = Path(__file__).resolve().parents[3] / "ansible"


def playbook_run(**overrides) -> ansible.PlaybookRun:
    values = {
        "ident": "run-1",
        "playbook": "deploy.yml",
        "hosts": (
            ansible.TargetHost(
                name="cache-1",
                address="192.0.2.7",
                port=2222,
                user="autobot",
                host_key="ssh-ed25519 AAAAkey",
                groups=("slm_agent", "redis"),
                variables={"slm_node_id": "n-1"},
                secret_variables={"slm_agent_token": "nat_token-value-123"},
            ),
        ),
        "private_key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n",
        "ansible_dir": ANSIBLE_DIR,
        "timeout_seconds": 60,
        "extra_vars": {"redis_maxmemory": "64mb"},
        "secret_extra_vars": {"redis_password": "s3cret-password-value"},
    }
    return ansible.PlaybookRun(**(values | overrides))


def test_the_private_data_dir_holds_0600_files_and_is_removed(tmp_path):
    run = playbook_run()
    with ansible.private_data_dir(run, base_dir=tmp_path) as directory:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        files = [path for path in directory.rglob("*") if path.is_file()]
        assert {path.relative_to(directory).as_posix() for path in files} == {
            "keys/id",
            "known_hosts",
            "inventory/hosts.json",
            "env/extravars",
        }
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
        assert (directory / "known_hosts").read_text() == "[192.0.2.7]:2222 ssh-ed25519 AAAAkey\n"
        inventory = json.loads((directory / "inventory" / "hosts.json").read_text())["all"]
        assert inventory["children"] == {
            "slm_agent": {"hosts": {"cache-1": {}}},
            "redis": {"hosts": {"cache-1": {}}},
        }
        host = inventory["hosts"]["cache-1"]
        assert (host["ansible_host"], host["ansible_port"], host["ansible_user"]) == (
            "192.0.2.7",
            2222,
            "autobot",
        )
        assert host["ansible_ssh_private_key_file"] == str(directory / "keys" / "id")
        assert host["ansible_python_interpreter"] == "/usr/bin/python3"
        extra = json.loads((directory / "env" / "extravars").read_text())
        assert extra == {"redis_maxmemory": "64mb", "redis_password": "s3cret-password-value"}
        environment = ansible.ansible_environment(run, directory)
        assert "StrictHostKeyChecking=yes" in environment["ANSIBLE_SSH_ARGS"]
        assert f"UserKnownHostsFile={directory / 'known_hosts'}" in environment["ANSIBLE_SSH_ARGS"]
        assert environment["PATH"].split(":")[0].endswith("/bin")
        assert (Path(environment["PATH"].split(":")[0]) / "ansible-playbook").exists()
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["../deploy.yml", "/etc/passwd", "playbooks/deploy.yml", "deploy", "Deploy.yml"]
)
def test_playbook_names_with_path_characters_are_refused(name):
    with pytest.raises(ansible.PlaybookRefused, match="is not a playbook name"):
        ansible.playbook_path(playbook_run(playbook=name))


def test_an_unknown_playbook_is_refused():
    with pytest.raises(ansible.PlaybookRefused, match="there is no playbook"):
        ansible.playbook_path(playbook_run(playbook="nosuch.yml"))


def test_secrets_are_redacted_everywhere_in_an_event():
    redact = ansible.Redactor(playbook_run().secrets())
    event = {"stdout": "pw=s3cret-password-value", "result": {"cmd": ["x", "nat_token-value-123"]}}
    assert redact(event) == {"stdout": f"pw={ansible.REDACTED}", "result": {"cmd": ["x", ansible.REDACTED]}}


def runner_event(counter: int, **data) -> dict:
    return {
        "counter": counter,
        "uuid": f"00000000-0000-0000-0000-{counter:012d}",
        "event": "runner_on_ok",
        "stdout": "ok: [cache-1]",
        "event_data": {"host": "cache-1", "task": "t", "play": "p", "res": {"changed": True, **data}},
    }


def test_events_are_batched_by_size_and_by_time():
    batches = []
    pump = ansible.EventPump(batches.append, ansible.Redactor([]))
    for counter in range(1, 502):
        pump(runner_event(counter))
    assert [len(batch) for batch in batches] == [500]
    pump.flush_if_due()
    assert len(batches) == 1  # the one left over is not due yet
    time.sleep(ansible.EVENT_FLUSH_SECONDS)
    pump.flush_if_due()
    assert [len(batch) for batch in batches] == [500, 1]
    assert pump.emitted == 501
    assert [record["counter"] for batch in batches for record in batch] == list(range(1, 502))


def test_an_event_keeps_a_compact_result():
    record = ansible.event_record(runner_event(1, ansible_facts={"packages": {"x": 1}}, msg="done"))
    assert record["result"] == {"changed": True, "msg": "done"}
    assert (record["host"], record["changed"], record["failed"]) == ("cache-1", True, False)
    big = ansible.event_record(runner_event(2, stdout="x" * 50_000))
    assert big["result"]["truncated"] is True


def test_the_service_playbook_allows_exactly_the_registry_services():
    import yaml

    from slm_project.fleet.registry import ROLES

    play = yaml.safe_load((ANSIBLE_DIR / "playbooks" / "service.yml").read_text())[0]
    registry_services = {service for role in ROLES.values() for service in role.services}
    assert set(play["vars"]["allowed_services"]) == registry_services


def test_the_deploy_playbook_has_a_play_for_every_deployable_role():
    import yaml

    from slm_project.deployments.services import role_is_deployable
    from slm_project.fleet.registry import ROLES

    plays = yaml.safe_load((ANSIBLE_DIR / "playbooks" / "deploy.yml").read_text())
    groups = {play["hosts"] for play in plays}
    deployable = {role.ansible_role for name, role in ROLES.items() if role_is_deployable(name)}
    assert {"slm_agent", "redis", "llm", "browser_worker"} <= deployable
    assert deployable <= groups
