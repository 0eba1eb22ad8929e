"""Build the three service images here, without Docker: `uv run just images`.

1. A base equivalent to the Dockerfiles' official ``python:3.11-slim-bookworm``, made by mmdebstrap
   from Debian bookworm packages (python3.11, venv, pip), with the mirrors of this machine's own
   apt configuration (never a written address). Kept as a tarball in the cache, keyed by a hash of
   its inputs, and imported into buildah's storage as ``localhost/relay-base:<key>``.
2. Each service's image built by buildah (vfs storage, chroot isolation) from the one ``Dockerfile``
   (``--build-arg SERVICE=<name> --target <name>``) with ``--build-arg BASE_IMAGE=localhost/relay-base:<key>``,
   tagged ``localhost/relay-shop/<name>:check``.
3. ``<cache>/images.json`` says what was built (storage options, image names, timings, sizes):
   the image check (``just images-check``, tests/images) reads it.

The cache (``RELAY_IMAGES_CACHE``, default /var/cache/relay-images) outlives the clone: the base
tarball, buildah's layers and uv's cache mount stay there between runs on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from shared.events.topology import SERVICE_NAMES

__all__ = ("build_images", "main")

ROOT = Path(__file__).resolve().parent.parent
SERVICES = SERVICE_NAMES
CACHE = Path(os.environ.get("RELAY_IMAGES_CACHE", "/var/cache/relay-images"))
RUNROOT = Path("/run/relay-images")
SUITE = "bookworm"
# What the official slim image holds that the services' build and runtime stages use: python3.11
# with venv and pip (the build stage runs `pip install uv`), groupadd/useradd (passwd), CA roots.
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-pip", "python-is-python3", "ca-certificates", "passwd")
# Like the slim image: no documentation, manual pages or translations.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "newuidmap": "uidmap"}
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
REVISION_LABEL = "org.opencontainers.image.revision"


def storage_options() -> list[str]:
    """Global options of buildah: vfs storage in the cache, so layers persist across runs."""
    return ["--root", str(CACHE / "storage"), "--runroot", str(RUNROOT), "--storage-driver", "vfs"]


def ensure_tools() -> None:
    """Install buildah and mmdebstrap from the machine's apt sources when they are missing."""
    missing = sorted({package for command, package in TOOLS.items() if shutil.which(command) is None})
    if not missing:
        return
    print(f"images: installing {' '.join(missing)}", flush=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)


def host_sources() -> list[Path]:
    """The apt source files of this machine that name bookworm: mmdebstrap pastes them as its mirrors."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    found = [
        path
        for path in candidates
        if path.is_file() and path.suffix in {".list", ".sources"} and SUITE in path.read_text()
    ]
    if not found:
        sys.exit(f"images: no apt source of this machine names {SUITE}; the base is made from {SUITE} packages")
    return found


def host_apt_options() -> list[Path]:
    """The apt settings of this machine about fetching (e.g. Check-Valid-Until), for mmdebstrap too."""
    directory = Path("/etc/apt/apt.conf.d")
    return [path for path in sorted(directory.glob("*")) if path.is_file() and "Acquire::" in path.read_text()]


def host_cas() -> list[Path]:
    """Extra CA certificates this machine trusts (an egress that re-signs TLS): the local base trusts them too."""
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


def base_key(sources: list[Path], options: list[Path], cas: list[Path]) -> str:
    """A hash of everything the base is made from: a change to any of them makes a new base."""
    digest = hashlib.sha256(json.dumps([SUITE, BASE_PACKAGES, DPKG_EXCLUDES]).encode())
    for path in [*sources, *options, *cas]:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def make_base_tarball(tarball: Path, sources: list[Path], options: list[Path], cas: list[Path]) -> None:
    """Debian bookworm with python3.11, as the official slim image has it, into ``tarball``."""
    hooks = [
        # The official image's Python is not "externally managed": its build stage runs `pip install`.
        'rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
    ]
    if cas:
        copies = " ".join(f'"{ca}"' for ca in cas)
        hooks.append(f'cp {copies} "$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates')
    partial = tarball.with_suffix(".partial.tar")
    command = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        *(f"--aptopt={option}" for option in options),
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
        str(partial),
        *(str(source) for source in sources),
    ]
    subprocess.run(command, check=True)
    partial.rename(tarball)


def buildah(*args: str, capture: bool = False) -> str:
    """Run buildah against the cached vfs storage."""
    result = subprocess.run(
        ["buildah", *storage_options(), *args], check=True, text=True, stdout=subprocess.PIPE if capture else None
    )
    return result.stdout.strip() if capture else ""


def image_exists(name: str) -> bool:
    """Whether buildah's storage holds an image called ``name``."""
    probe = subprocess.run(
        ["buildah", *storage_options(), "inspect", "--type", "image", name], capture_output=True, check=False
    )
    return probe.returncode == 0


def import_base(tarball: Path, name: str) -> None:
    """The rootfs tarball as an image, configured as the official image is (PATH, LANG, CMD)."""
    container = buildah("from", "scratch", capture=True)
    try:
        buildah("add", "--quiet", container, str(tarball), "/")
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            # This machine's egress re-signs TLS: uv (own CA roots) must read the system bundle.
            "--env",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "--cmd",
            '["python3"]',
            container,
        )
        buildah("commit", "--quiet", container, name)
    finally:
        subprocess.run(["buildah", *storage_options(), "rm", container], capture_output=True, check=False)


def image_size(name: str) -> int:
    """The bytes of an image's layers, uncompressed (what its root filesystem takes on disk)."""
    manifest = json.loads(json.loads(buildah("inspect", "--type", "image", name, capture=True))["Manifest"])
    return sum(int(layer["size"]) for layer in manifest["layers"])


def image_label(name: str, label: str) -> str | None:
    """One label of an image's config."""
    config = json.loads(buildah("inspect", "--type", "image", name, capture=True))["OCIv1"]["config"]
    labels: dict[str, str] = config.get("Labels") or {}
    return labels.get(label)


def stamp_revision(name: str, commit: str) -> None:
    """Give an image the revision label of ``commit`` when it carries another one.

    buildah 1.28 ignores ``--label`` when every step of a build is a cache hit: a build at a commit
    that changed nothing the image holds (a README edit) returns the image of the earlier commit,
    labelled with that commit. The label is then set on a container of it and committed again.
    """
    if image_label(name, REVISION_LABEL) == commit:
        return
    print(f"images: stamping {name} with revision {commit[:12]} (all its steps were cached)", flush=True)
    container = buildah("from", "--pull=never", name, capture=True)
    try:
        buildah("config", "--label", f"{REVISION_LABEL}={commit}", container)
        buildah("commit", "--quiet", container, name, capture=True)
    finally:
        buildah("rm", container, capture=True)


def revision() -> str:
    """The commit being built, for the image's revision label."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def build_images(services: tuple[str, ...] = SERVICES) -> dict[str, object]:
    """Make the base (or reuse it), build each service's image against it; return what was built."""
    ensure_tools()
    for directory in (CACHE / "storage", CACHE / "tmp", RUNROOT):
        directory.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    sources, options, cas = host_sources(), host_apt_options(), host_cas()
    key = base_key(sources, options, cas)
    tarball = CACHE / f"base-{key}.tar"
    base = f"localhost/relay-base:{key}"
    started = time.monotonic()
    if not tarball.exists():
        print(f"images: making the base rootfs {tarball.name} with mmdebstrap", flush=True)
        make_base_tarball(tarball, sources, options, cas)
    if not image_exists(base):
        import_base(tarball, base)
    timings["base"] = round(time.monotonic() - started, 1)
    # buildah keeps RUN --mount=type=cache directories under $TMPDIR: in the cache, they persist.
    env = os.environ | {"TMPDIR": str(CACHE / "tmp")}
    images: dict[str, str] = {}
    commit = revision()
    for service in services:
        name = f"localhost/relay-shop/{service}:check"
        print(f"images: building {name}", flush=True)
        started = time.monotonic()
        subprocess.run(
            [
                "buildah",
                *storage_options(),
                "build",
                "--isolation",
                "chroot",
                "--layers",
                "--pull=never",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--build-arg",
                f"SERVICE={service}",
                "--target",
                service,
                "--build-arg",
                f"REVISION={commit}",
                # buildah's layer cache does not key the Dockerfile's LABEL step on build-arg values: a
                # build at a new commit reused the old revision label. A label given here is set at commit.
                "--label",
                f"{REVISION_LABEL}={commit}",
                "--file",
                "Dockerfile",
                "--tag",
                name,
                ".",
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
        stamp_revision(name, commit)
        timings[service] = round(time.monotonic() - started, 1)
        images[service] = name
    sizes = {service: image_size(name) for service, name in images.items()}
    built: dict[str, object] = {
        "storage": storage_options(),
        "base": base,
        "revision": commit,
        "images": images,
        "seconds": timings,
        "sizes": sizes,
    }
    (CACHE / "images.json").write_text(json.dumps(built, indent=2) + "\n")
    return built


def report() -> None:
    """Print each image's size, its venv's size and its api's start time (from the last check)."""
    built = json.loads((CACHE / "images.json").read_text())
    record = CACHE / "check.json"
    checked = json.loads(record.read_text()) if record.exists() else {}
    print(f"{'image':<30} {'image MB':>9} {'venv MB':>8} {'api ready s':>12} {'worker ready s':>15}  build s")
    for service, name in built["images"].items():
        found = checked.get(service, {})
        venv = found.get("venv_bytes")
        ready = found.get("ready_seconds", {})
        print(
            f"{name:<30} {built['sizes'][service] / 1e6:>9.1f} {venv / 1e6 if venv else float('nan'):>8.1f}"
            f" {ready.get('api', float('nan')):>12} {ready.get('worker', float('nan')):>15}"
            f"  {built['seconds'].get(service, float('nan'))}"
        )


def main() -> None:
    """Build the images and print what was built, with the time each step took."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="*", help=f"some of {', '.join(SERVICES)} (default: all three)")
    parser.add_argument("--report", action="store_true", help="print sizes and start times; build nothing")
    args = parser.parse_args()
    if args.report:
        report()
        return
    if unknown := set(args.services) - set(SERVICES):
        parser.error(f"unknown services: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    built = build_images(tuple(args.services) or SERVICES)
    print(json.dumps(built, indent=2))
    print(f"images: done in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
