"""The command line without a file: a sidecar configured by environment
variables alone, and a missing -c file being an error."""
import os
import subprocess

from conftest import clean_env, wsguard_bin


def run_env(args, env, cwd):
    return subprocess.run([os.path.abspath(wsguard_bin())] + args,
                          env=clean_env(env), cwd=cwd, capture_output=True,
                          text=True, timeout=30)


def test_environment_only_check(tmp_path, certs):
    # No -c and no /etc/wsguard/wsguard.ini here: defaults + environment.
    assert not os.path.exists("/etc/wsguard/wsguard.ini")
    r = run_env(["-t"], {"WSGUARD_TLS_CERT": certs.cert,
                         "WSGUARD_TLS_KEY": certs.key,
                         "WSGUARD_BACKEND_URL": "ws://127.0.0.1:9"},
                tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(environment): configuration OK" in r.stdout, r.stdout


def test_environment_only_bad_value(tmp_path):
    r = run_env(["-t"], {"WSGUARD_TLS_ENABLED": "no",
                         "WSGUARD_SERVER_IDLE_TIMEOUT": "soon"}, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "WSGUARD_SERVER_IDLE_TIMEOUT" in r.stdout + r.stderr


def test_named_file_must_exist(tmp_path):
    missing = str(tmp_path / "nope.ini")
    r = run_env(["-t", "-c", missing], {"WSGUARD_TLS_ENABLED": "no"},
                tmp_path)
    assert r.returncode == 1
    assert missing in r.stdout + r.stderr
