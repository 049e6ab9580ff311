"""[server] user / group: bind and read keys as root, then run as that
user; a drop that cannot be done stops the start. Run as root (the test
creates a system user with useradd and removes it after)."""

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from conftest import clean_env, wait_until, wsguard_bin, write_ini
from helpers import connect, run

USER = "wsguard-test"


@pytest.fixture(scope="module")
def test_user():
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs root")
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", USER], check=True)
        created = True
    yield pwd.getpwnam(USER)
    if created:
        subprocess.run(["userdel", USER], check=False)


def proc_ids(pid):
    uid = gid = groups = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = [int(x) for x in line.split()[1:]]
            elif line.startswith("Gid:"):
                gid = [int(x) for x in line.split()[1:]]
            elif line.startswith("Groups:"):
                groups = [int(x) for x in line.split()[1:]]
    return uid, gid, groups


def test_runs_as_the_user_after_binding(test_user, backend, wsguard_factory,
                                        certs):
    # the certificate stays readable for the user (SIGHUP re-reads it)
    os.chmod(certs.key, 0o644)
    os.chmod(certs.dir, 0o755)
    wsg = wsguard_factory(backend.url, SERVER_USER=USER)
    # "listening on" (what the factory awaits) comes before the drop; the
    # drop and the workers are done once "started" is logged
    assert wait_until(lambda: " started: " in wsg.stderr_text(), 30), \
        wsg.stderr_text()
    assert "running as user %s" % USER in wsg.stderr_text()
    uid, gid, groups = proc_ids(wsg.pid)
    assert uid == [test_user.pw_uid] * 4, uid
    assert gid == [test_user.pw_gid] * 4, gid
    assert groups == [test_user.pw_gid], groups
    # every thread too (workers start after the drop)
    for tid in os.listdir("/proc/%d/task" % wsg.pid):
        u, _, _ = proc_ids(int(tid))
        assert u == [test_user.pw_uid] * 4, (tid, u)

    async def go():
        async with connect(wsg) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
    run(go(), 20)
    wsg.stop()


def test_unknown_user_refuses_to_start(tmp_path, certs):
    ini = write_ini(tmp_path / "w.ini", certs, "ws://127.0.0.1:9",
                    extra="")
    env = clean_env({"WSGUARD_SERVER_USER": "no-such-user-xyz",
                     "WSGUARD_SERVER_LISTEN": "127.0.0.1:0"})
    r = subprocess.run([wsguard_bin(), "-c", ini], env=env, timeout=30,
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert 'no user \\"no-such-user-xyz\\"' in r.stderr, r.stderr
    assert " started:" not in r.stderr, r.stderr


def test_drop_not_permitted_refuses_to_start(test_user, certs):
    """Started as an unprivileged user, switching to another one fails:
    wsguard must not go on as the starting user."""
    d = tempfile.mkdtemp(prefix="wsguard-priv-")
    try:
        os.chmod(d, 0o755)
        cert = shutil.copy(certs.cert, d)
        key = shutil.copy(certs.key, d)
        os.chmod(key, 0o644)
        u = test_user
        env = clean_env({"WSGUARD_SERVER_USER": "root",
                         "WSGUARD_SERVER_LISTEN": "127.0.0.1:0",
                         "WSGUARD_TLS_CERT": cert, "WSGUARD_TLS_KEY": key,
                         "WSGUARD_BACKEND_URL": "ws://127.0.0.1:9",
                         "WSGUARD_ADMIN_LISTEN": ""})
        binary = shutil.copy(os.path.abspath(wsguard_bin()), d)
        r = subprocess.run([binary], env=env, timeout=30, cwd=d,
                           capture_output=True, text=True,
                           preexec_fn=lambda: (os.setgroups([]),
                                               os.setgid(u.pw_gid),
                                               os.setuid(u.pw_uid)))
        assert r.returncode != 0, r.stderr
        assert "cannot switch to user root" in r.stderr, r.stderr
        assert " started:" not in r.stderr, r.stderr
    finally:
        shutil.rmtree(d)
