"""The bubblewrap sandbox looks a container's command up on its PATH before starting it, as runc does.

Real files only: the host's system folders and a temporary folder standing in for an image's bound files.
"""

from __future__ import annotations

import os
from pathlib import Path

from workflows.runner.images import ImageRoot
from workflows.runner.sandbox import Sandbox


def test_a_program_on_the_host_path_is_found_and_a_missing_one_is_not() -> None:
    image = ImageRoot("alpine")
    assert not Sandbox.missing("sh", image, "/usr/local/bin:/usr/bin:/bin")
    assert Sandbox.missing("no-such-server-binary", image, "/usr/local/bin:/usr/bin:/bin")
    assert Sandbox.missing("sh", image, "")  # no PATH: nothing to find it on


def test_a_folder_the_image_binds_is_searched_where_its_files_lie_here(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "serve-it"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    image = ImageRoot("example/tools:1", binds=((str(tmp_path / "bin"), "/opt/tools/bin"),))
    assert Sandbox.missing("serve-it", image, "/usr/bin")
    assert Sandbox.missing("serve-it", image, "/opt/tools/bin")  # there, but not executable
    os.chmod(tool, 0o755)
    assert not Sandbox.missing("serve-it", image, "/usr/bin:/opt/tools/bin")


def test_a_path_with_a_slash_is_left_to_the_exec() -> None:
    assert not Sandbox.missing("/no/such/program", ImageRoot("alpine"), "/usr/bin")
