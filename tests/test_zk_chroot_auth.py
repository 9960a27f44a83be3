"""Commands against a ZooKeeper chroot that only a digest identity may use: ``nxnw
snapshot``'s checkpoints authenticate as a plan's sessions do, a session refused on the
chroot is one line (never a traceback) whichever command meets it, and bad security
settings are refused, naming the file, before any engine is touched."""

from __future__ import annotations

import uuid
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from pydantic import SecretStr

from datastore import Entity, open_engine
from nxnw.services.endpoints import HOST, ZOOKEEPER, engine_url
from snapshot import verify_app
from sync.state import TaskRecordStore
from sync.zk_client import ZooKeeperSecurity, zk_client
from tests.conftest import require, run_nxnw


def _security_file(tmp_path: Path, user: str, variable: str) -> Path:
    path = tmp_path / "zk-security.toml"
    path.write_text(f'digest_user = "{user}"\ndigest_password = {{ env = "{variable}" }}\n')
    return path


async def test_a_copy_checkpoints_on_a_digest_only_zookeeper_with_the_digest_acl(sqlite_dir: str, app_name: str,
                                                                                 tmp_path: Path) -> None:
    """Before ``--zookeeper-security`` the command had no way to authenticate: its session
    was refused (NoAuthError) on a chroot only the digest identity may use, so a secured
    deployment could not checkpoint (resume) a hand-run copy at all."""
    require("zookeeper-n1")
    source, target = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    n1, n2 = open_engine(source), open_engine(target)
    await n1.open()
    await n2.open()
    security = ZooKeeperSecurity(digest_user=f"nxnw-{uuid.uuid4().hex[:6]}", digest_password=SecretStr(uuid.uuid4().hex))
    variable = "NXNW_TEST_SNAPSHOT_ZK_DIGEST"
    password = {variable: security.digest_password.get_secret_value()}
    root = f"/nxnw-test-{uuid.uuid4().hex[:10]}"
    admin = zk_client(f"{HOST}:{ZOOKEEPER['n1']}", security, timeout=10)
    admin.start(15)
    admin.create(root)  # the digest identity's alone
    try:
        await n1.apply([Entity(app_name, "K", b"k%05d" % i, b"v" * 100, 1000 + i) for i in range(1_000)])
        argv = ["snapshot", "copy", "--from", source, "--to", target, "--app", app_name,
                "--zookeeper", f"{HOST}:{ZOOKEEPER['n1']}{root}", "--task", "secured", "--ranges", "8"]

        refused = run_nxnw(*argv)
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(f'digest_user = "{security.digest_user}"\ndigest_password = "not-the-password"\n')
        refused_wrong = run_nxnw(*argv, "--zookeeper-security", str(wrong))
        for proc in (refused, refused_wrong):
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert (proc.stdout + proc.stderr).strip().splitlines() == [
                f"nxnw snapshot: the checkpoints' ZooKeeper at {HOST}:{ZOOKEEPER['n1']}{root} refused nxnw's session "
                "on its chroot (NoAuthError): nxnw must authenticate as a digest identity the chroot's ACL grants "
                "(zookeeper_security)"]

        secured = run_nxnw(*argv, "--zookeeper-security", str(_security_file(tmp_path, security.digest_user, variable)),
                       env=password)
        assert secured.returncode == 0, secured.stdout + secured.stderr
        assert "0 of 8 ranges were already done" in secured.stdout
        assert (await verify_app(n1, n2, app_name)).identical

        mine = zk_client(f"{HOST}:{ZOOKEEPER['n1']}{root}", security, timeout=10)
        mine.start(15)
        try:
            done = [rid for rid, doc in TaskRecordStore(mine).list("secured").items() if rid != "_plan" and doc["done"]]
            assert len(done) == 8, "a range's checkpoint is missing"
        finally:
            mine.stop()
            mine.close()
        plain = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}", timeout=10)
        plain.start(15)
        try:
            checkpoint_nodes = [f"{root}/{child}" for child in admin.get_children(root)]
            assert checkpoint_nodes, "the copy wrote nothing under the chroot"
            for node in checkpoint_nodes:
                try:
                    plain.get_children(node)
                except NoAuthError:
                    continue
                raise AssertionError(f"{node} is readable without the digest: its ACL is open")
        finally:
            plain.stop()
            plain.close()

        again = run_nxnw(*argv, "--zookeeper-security", str(_security_file(tmp_path, security.digest_user, variable)),
                     env=password)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "8 of 8 ranges were already done" in again.stdout
    finally:
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()
        await n1.close()
        await n2.close()


def test_bad_zookeeper_security_settings_are_one_line_and_exit_2_before_an_engine_is_opened(tmp_path: Path) -> None:
    target = tmp_path / "n2.db"
    base = ["snapshot", "copy", "--from", f"sqlite:///{tmp_path / 'n1.db'}", "--to", f"sqlite:///{target}",
            "--app", "a", "--zookeeper", f"{HOST}:{ZOOKEEPER['n1']}"]
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('digest_user = "u"\ndigest_password = { env = "NXNW_TEST_UNSET_VARIABLE" }\nport = 1\n')
    cases = {
        "unset": (_security_file(tmp_path, "u", "NXNW_TEST_UNSET_VARIABLE"),
                  "digest_password: environment variable NXNW_TEST_UNSET_VARIABLE is not set"),
        "unknown key": (unknown, "port: unknown setting"),
        "missing file": (tmp_path / "absent.toml", "cannot read: No such file or directory"),
    }
    for name, (path, reason) in cases.items():
        proc = run_nxnw(*base, "--zookeeper-security", str(path))
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        text = proc.stdout + proc.stderr
        assert text.startswith(f"nxnw snapshot: {path}: "), (name, text)
        assert reason in text, (name, text)
        assert "Traceback" not in text, (name, text)
    lone = run_nxnw("snapshot", "load", "--to", f"sqlite:///{target}", "--in", str(tmp_path / "x.chunks"),
                "--zookeeper-security", str(unknown))
    assert lone.returncode == 2
    assert (lone.stdout + lone.stderr).strip().splitlines() == [
        "nxnw snapshot: --zookeeper-security needs --zookeeper: it says how to reach the checkpoints' ZooKeeper"]
    assert not target.exists(), "an engine was opened before the settings were checked"


def test_a_proxy_and_a_plan_command_refused_on_the_chroot_say_so_in_one_line(tmp_path: Path) -> None:
    """A plan whose digest password is wrong: ``nxnw proxy serve`` said only "ZooKeeper:
    NoAuthError:" and ``nxnw status`` crashed with a traceback (kazoo cannot close a client
    that is still started)."""
    require("zookeeper-n1")
    security = ZooKeeperSecurity(digest_user=f"nxnw-{uuid.uuid4().hex[:6]}", digest_password=SecretStr(uuid.uuid4().hex))
    root = f"/nxnw-test-{uuid.uuid4().hex[:10]}"
    admin = zk_client(f"{HOST}:{ZOOKEEPER['n1']}", security, timeout=10)
    admin.start(15)
    admin.create(root)
    hosts, n2_hosts = f"{HOST}:{ZOOKEEPER['n1']}{root}", f"{HOST}:{ZOOKEEPER['n2']}"
    plan = tmp_path / "plan.toml"
    plan.write_text(f'name = "refused"\napps = ["a"]\nsync_paths = ["/apps/a"]\n\n'
                    f'[n1]\nengine = "sqlite:///{tmp_path / "n1.db"}"\nzookeeper = "{hosts}"\nmemcached = "127.0.0.1:9"\n\n'
                    f'[n1.zookeeper_security]\ndigest_user = "{security.digest_user}"\ndigest_password = "not-it"\n\n'
                    f'[n2]\nengine = "sqlite:///{tmp_path / "n2.db"}"\nzookeeper = "{n2_hosts}"\n'
                    'memcached = "127.0.0.1:9"\n')
    try:
        for verb, argv in (("proxy", ("proxy", "serve", str(plan), "--instance", "refused", "--port", "0")),
                           ("status", ("status", str(plan)))):
            proc = run_nxnw(*argv)
            assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
            assert (proc.stdout + proc.stderr).strip().splitlines() == [
                f"nxnw {verb}: N1's ZooKeeper at {hosts} refused nxnw's session on its chroot (NoAuthError): nxnw "
                "must authenticate as a digest identity the chroot's ACL grants (zookeeper_security)"], verb
    finally:
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()
