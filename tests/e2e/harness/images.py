"""Container images for the real node, built here: no image registry is reachable.

An image is an OCI image layout (the `oci-layout` file, `index.json`, and content-addressed
blobs: one uncompressed layer, the image config, the manifest) in one tar archive, the form
`ctr images import` reads. The index names the image with the `io.containerd.image.name`
annotation, which containerd's importer takes as the image's name. Two images:

- the workload image: Debian's static busybox (`/bin/busybox` and a link per applet), so a
  pod can run `sh -c ...`, `sleep`, `true`; pods use `imagePullPolicy: Never`;
- the sandbox ("pause") image: the static `pause` binary built beside the kubelet.

Byte-for-byte reproducible for the same inputs (fixed mtimes and owners, sorted entries), so
importing the same image twice is a no-op for containerd.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

WORKLOAD_IMAGE = "vramguard.local/e2e/busybox:1"
PAUSE_IMAGE = "vramguard.local/e2e/pause:1"
BUSYBOX = Path("/bin/busybox")

_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER = "application/vnd.oci.image.layer.v1.tar"
_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class ImageSpec:
    """What goes into an image: files (path in the image → file here), symlinks (path →
    target), empty directories, and the config's entrypoint, command and env."""

    name: str
    files: Mapping[str, Path]
    symlinks: Mapping[str, str] = field(default_factory=dict)
    directories: Sequence[str] = ("tmp",)
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/bin",)


def busybox_image(busybox: Path = BUSYBOX) -> ImageSpec:
    """The workload image: busybox with a link for every applet it lists, `sh` by default."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    links = {f"bin/{applet}": "busybox" for applet in applets if applet != "busybox"}
    return ImageSpec(
        name=WORKLOAD_IMAGE,
        files={"bin/busybox": busybox},
        symlinks=links,
        cmd=("sh",),
    )


def pause_image(pause: Path) -> ImageSpec:
    """The sandbox image: one static binary, its entrypoint."""
    return ImageSpec(name=PAUSE_IMAGE, files={"pause": pause}, entrypoint=("/pause",))


def write_archive(spec: ImageSpec, out: Path) -> Path:
    """Write the image's OCI layout as a tar archive at ``out``; return ``out``."""
    layer = _layer(spec)
    layer_digest = _digest(layer)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": list(spec.env),
                **({"Entrypoint": list(spec.entrypoint)} if spec.entrypoint else {}),
                **({"Cmd": list(spec.cmd)} if spec.cmd else {}),
            },
            # Uncompressed layer: its diff ID is its digest.
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": _MANIFEST,
            "config": {"mediaType": _CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": _LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    )
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": _INDEX,
            "manifests": [
                {
                    "mediaType": _MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": spec.name,
                        "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
    )
    entries = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        **{f"blobs/sha256/{_hex(blob)}": blob for blob in (layer, config, manifest)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("blobs", "blobs/sha256"):
            archive.addfile(_info(directory, tarfile.DIRTYPE, 0o755))
        for name in sorted(entries):
            data = entries[name]
            archive.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return out


def _layer(spec: ImageSpec) -> bytes:
    """The image's one filesystem layer, as an uncompressed tar."""
    buffer = io.BytesIO()
    directories = {"bin", *spec.directories}
    for path in [*spec.files, *spec.symlinks]:
        parts = path.split("/")[:-1]
        directories.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for directory in sorted(directories):
            mode = 0o1777 if directory == "tmp" else 0o755
            layer.addfile(_info(directory, tarfile.DIRTYPE, mode))
        for path in sorted(spec.files):
            data = spec.files[path].read_bytes()
            layer.addfile(_info(path, tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for path in sorted(spec.symlinks):
            info = _info(path, tarfile.SYMTYPE, 0o777)
            info.linkname = spec.symlinks[path]
            layer.addfile(info)
    return buffer.getvalue()


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _digest(blob: bytes) -> str:
    return f"sha256:{_hex(blob)}"
