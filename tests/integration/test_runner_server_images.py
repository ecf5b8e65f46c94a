"""Server images under `--isolation bwrap`: nginx and influxdb stood in for by the host's Debian programs.

Our own workflows: an `nginx` daemon and an `influxdb` sidecar given no `command` run their image's entrypoint (the
host's nginx with the image's config, influxd with its data in the pod's /tmp); the clients are `curlimages/curl`
pods, whose `sh` is busybox's ash as in that alpine image (`>& FILE`, a syntax error in dash). Real servers on
their images' ports (80, 8086): nothing else on this machine may listen there while these run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.runner_support import BWRAP_PROBLEM, nodes, run_text

_MISSING = [p for p in ("nginx", "influxd", "busybox") if not shutil.which(p, path="/usr/sbin:/usr/bin:/sbin:/bin")]
pytestmark = [
    pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=str(BWRAP_PROBLEM)),
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"{', '.join(_MISSING)} missing: apt-get install nginx-light influxdb busybox (the images' stand-ins)",
    ),
]

NGINX_DAEMON = """
kind: Workflow
metadata: {generateName: nginx-daemon-}
spec:
  entrypoint: main
  templates:
    - name: main
      steps:
        - - {name: web, template: web}
        - - name: client
            template: client
            arguments: {parameters: [{name: ip, value: "{{steps.web.ip}}"}]}
    - name: web
      daemon: true
      container:
        image: nginx:1.13
        readinessProbe: {httpGet: {path: /, port: 80}}
    - name: client
      inputs: {parameters: [{name: ip}]}
      container:
        image: curlimages/curl:8.5.0
        command: [sh, -c]
        args:
          - curl -s http://{{inputs.parameters.ip}}:80/ >& /tmp/page && grep -o '<title>Welcome to nginx' /tmp/page
"""

INFLUX_SIDECAR = """
kind: Workflow
metadata: {generateName: influx-sidecar-}
spec:
  entrypoint: main
  templates:
    - name: main
      container:
        image: curlimages/curl:8.5.0
        command: [sh, -c]
        args:
          - >-
            until curl -s -XPOST http://127.0.0.1:8086/query --data-urlencode 'q=CREATE DATABASE t' >& /dev/null;
            do sleep 0.3; done &&
            curl -s -XPOST 'http://127.0.0.1:8086/write?db=t' -d 'cpu,host=a load=42' &&
            curl -s -G http://127.0.0.1:8086/query --data-urlencode db=t --data-urlencode 'q=SELECT load FROM cpu'
      sidecars:
        - {name: influxdb, image: influxdb:1.2}
"""


def test_an_nginx_daemon_serves_its_image_page_to_a_curl_pod(tmp_path: Path) -> None:
    """GIVEN an nginx:1.13 daemon with no command (its readiness probe on port 80) and a curl pod that redirects
    with `>&` WHEN run under bwrap THEN Succeeded: the client got nginx's page from `{{steps.web.ip}}`."""
    result = run_text(tmp_path, NGINX_DAEMON, isolation="bwrap")
    assert result.phase == "Succeeded", result.tree
    assert nodes(result)["client"]["outputs"]["result"] == "<title>Welcome to nginx"


def test_an_influxdb_sidecar_stores_and_returns_a_point(tmp_path: Path) -> None:
    """GIVEN an influxdb:1.2 sidecar with no command WHEN the main container creates a database, writes a point
    and queries it THEN Succeeded and the query returned the point (influxd wrote its data in the pod's /tmp)."""
    result = run_text(tmp_path, INFLUX_SIDECAR, isolation="bwrap")
    assert result.phase == "Succeeded", result.tree
    assert '"columns":["time","load"]' in nodes(result)[result.name]["outputs"]["result"]
    assert ",42]" in nodes(result)[result.name]["outputs"]["result"]
