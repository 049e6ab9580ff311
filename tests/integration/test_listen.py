"""Listening addresses are not shared by accident: a second process on a
wsguard's address (another wsguard, or anything else) makes it refuse to
start, unless [server] shared_listen = yes says the sharing is meant."""

import socket
import subprocess

from conftest import clean_env, wsguard_bin


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port, certs, backend, extra=None):
    env = {"WSGUARD_SERVER_LISTEN": "127.0.0.1:%d" % port,
           "WSGUARD_TLS_CERT": certs.cert, "WSGUARD_TLS_KEY": certs.key,
           "WSGUARD_BACKEND_URL": backend.url, "WSGUARD_ADMIN_LISTEN": "",
           "WSGUARD_SERVER_WORKERS": "1"}
    env.update(extra or {})
    return subprocess.Popen([wsguard_bin()], env=clean_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_listening(proc):
    for line in proc.stderr:
        if "listening on" in line:
            return
    raise AssertionError("wsguard exited before listening: %r" % proc.wait())


def test_second_wsguard_refused(certs, backend, tmp_path):
    port = free_port()
    first = start(port, certs, backend)
    try:
        wait_listening(first)
        second = start(port, certs, backend)
        err = second.stderr.read()
        assert second.wait(timeout=30) == 1, err
        assert "in use by another process" in err, err
        assert "shared_listen" in err, err
    finally:
        first.terminate()
        assert first.wait(timeout=30) == 0


def test_other_listener_refused(certs, backend):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        p = start(port, certs, backend)
        err = p.stderr.read()
        assert p.wait(timeout=30) == 1, err
        assert "in use by another process" in err, err


def test_shared_on_purpose(certs, backend):
    port = free_port()
    first = start(port, certs, backend)
    try:
        wait_listening(first)
        second = start(port, certs, backend,
                       {"WSGUARD_SERVER_SHARED_LISTEN": "yes"})
        try:
            wait_listening(second)
        finally:
            second.terminate()
            assert second.wait(timeout=30) == 0
    finally:
        first.terminate()
        assert first.wait(timeout=30) == 0
