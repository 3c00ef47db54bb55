"""The real node's locally built images (tests/e2e/harness/images.py): an OCI image layout that
`ctr images import` takes, checked here by reading it back as an importer would: the index
names the image, every descriptor's digest and size match its blob, the config's diff ID is
the uncompressed layer's digest, and the layer holds the files and links asked for."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from tests.e2e.harness.images import ImageSpec, pause_image, write_archive


def read_layout(archive: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    with tarfile.open(archive) as tar:
        files = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    return files, json.loads(files["index.json"])


def blob(files: dict[str, bytes], descriptor: dict[str, Any]) -> bytes:
    algorithm, digest = descriptor["digest"].split(":")
    data = files[f"blobs/{algorithm}/{digest}"]
    assert hashlib.sha256(data).hexdigest() == digest
    assert len(data) == descriptor["size"]
    return data


def test_layout_is_self_consistent_and_names_the_image(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF fake")
    spec = ImageSpec(
        name="vramguard.local/e2e/tool:1",
        files={"bin/tool": binary},
        symlinks={"bin/alias": "tool"},
        cmd=("tool",),
    )
    files, index = read_layout(write_archive(spec, tmp_path / "tool.tar"))

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == spec.name
    manifest = json.loads(blob(files, entry))
    config = json.loads(blob(files, manifest["config"]))
    (layer_descriptor,) = manifest["layers"]
    layer = blob(files, layer_descriptor)
    assert layer_descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert config["rootfs"]["diff_ids"] == [layer_descriptor["digest"]]
    assert config["config"]["Cmd"] == ["tool"]
    assert "Entrypoint" not in config["config"]

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["bin/tool"]).read() == b"\x7fELF fake"  # type: ignore[union-attr]
    assert members["bin/tool"].mode == 0o755
    assert members["bin/alias"].issym()
    assert members["bin/alias"].linkname == "tool"
    assert members["tmp"].isdir()
    assert members["tmp"].mode == 0o1777


def test_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    pause = tmp_path / "pause"
    pause.write_bytes(b"pause binary")
    first = write_archive(pause_image(pause), tmp_path / "a.tar").read_bytes()
    second = write_archive(pause_image(pause), tmp_path / "b.tar").read_bytes()
    assert first == second, "a rebuilt image would be imported as a new one"
    files, index = read_layout(tmp_path / "a.tar")
    config = json.loads(blob(files, json.loads(blob(files, index["manifests"][0]))["config"]))
    assert config["config"]["Entrypoint"] == ["/pause"]
