"""The container image, built and run for real with podman: runs
scripts/container-test.sh (also `make container-test`), which builds
docker/Dockerfile from a locally made Debian base, starts the image beside
an echo app configured by environment only, and checks echo, 403, 401,
non-root, read-only root, HEALTHCHECK, a clean stop with close 1001, and
the image size. See docs/docker.md.

Needs root on Debian (the script installs podman, runc and mmdebstrap
when they are missing, and reaches the Debian mirror from inside the
build). About 5 minutes on a fresh machine, 25 s once the images are
cached. Skipped when not root, and in `make asan` (it tests the image,
which does not depend on the sanitizer build)."""
import faulthandler
import os
import shutil
import signal
import subprocess

import pytest

from conftest import REPO, clean_env

LIMIT = 900     # s; the whole test suite must stay under 15 minutes


def test_container_image_for_real():
    if os.geteuid() != 0:
        pytest.skip("needs root (podman with runc); run `make container-test` as root")
    if shutil.which("dpkg-query") is None or shutil.which("apt-get") is None:
        pytest.skip("needs Debian's dpkg and apt")
    if os.environ.get("ASAN_OPTIONS"):
        pytest.skip("the image does not depend on the sanitizer build")
    # Longer than the suite's per-test deadline and traceback dump.
    signal.alarm(LIMIT + 60)
    faulthandler.cancel_dump_traceback_later()
    r = subprocess.run(["scripts/container-test.sh"], cwd=REPO,
                       env=clean_env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=LIMIT)
    lines = r.stdout.rstrip("\n").splitlines()
    assert r.returncode == 0, r.stdout
    assert lines and lines[-1].endswith(" passed, 0 failed"), r.stdout
    assert not [x for x in lines if x.startswith("FAILED")], r.stdout
