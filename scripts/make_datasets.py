"""Build the frozen evaluation datasets under examples/data/ from Debian's own archive metadata.

Debian retrieval + classification (examples/data/debian/):
  1. `apt-get update -o Acquire::Languages=en` fetches the Translation-en index (pass --update to
     run it from here; it needs root). Long descriptions come from it via `lz4cat`.
  2. Labels (Section, Priority, Tag, Source) come from `apt-cache dumpavail`.
  3. Non-`lib*` packages whose long description is 120..1500 characters, transitional packages and
     duplicated synopses/descriptions dropped, ordered by sha1 of the package name; the first N.
  4. Split by `hash_split(package, {calibration: .25, validation: .25, test: .5})`.

Amazon fine-food reviews (examples/data/fine_foods/): `small_fine_foods` from Debian's
`r-cran-modeldata` (apt-get download + dpkg -x, no R needed), read with PyPI `rdata`.

Regenerate (from the repo root):  python scripts/make_datasets.py [--update] [--n 4000]
Output is byte-for-byte deterministic for a given archive snapshot (gzip mtime is zeroed).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import lzma
import re
import struct
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from tierserve.pruning.data import hash_split

APT_LISTS = Path("/var/lib/apt/lists")
SPLITS = {"calibration": 0.25, "validation": 0.25, "test": 0.5}
MIN_CHARS, MAX_CHARS = 120, 1500  # long description length kept (characters, normalised)
TOP_SECTIONS = 12
COMMAND = "python scripts/make_datasets.py"

# Section -> content-type group, the slice used by per-slice gates.
SECTION_GROUPS = {
    "code": ["devel", "python", "perl", "ruby", "golang", "rust", "javascript", "java", "php",
             "haskell", "ocaml", "lisp", "gnu-r", "libdevel", "interpreters", "vcs", "database",
             "debug", "introspection", "cli-mono", "zope", "tcl", "fortran", "lua"],
    "docs": ["doc"],
    "system": ["admin", "utils", "kernel", "shells", "misc", "otherosfs", "embedded", "oldlibs",
               "libs", "metapackages", "virtual", "tasks"],
    "network": ["net", "web", "mail", "httpd", "comm", "news"],
    "desktop": ["x11", "gnome", "kde", "xfce", "gnustep", "fonts"],
    "media": ["sound", "graphics", "video"],
    "science": ["science", "math", "electronics", "hamradio", "education", "gnu-r-science"],
    "text": ["text", "tex", "editors", "localization"],
    "games": ["games"],
}
SECTION_TO_GROUP = {s: g for g, secs in SECTION_GROUPS.items() for s in secs}


@dataclass(frozen=True)
class Package:
    name: str
    source: str
    section: str
    synopsis: str
    description: str  # whitespace-normalised long description


# -- reading Debian metadata --------------------------------------------------------------------
def stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs -> {field: value}; continuation lines are kept, joined with newlines."""
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def normalise(long_lines: Iterable[str]) -> str:
    """Debian long description lines (' .' = blank line) -> one whitespace-normalised string."""
    words = " ".join("" if ln.strip() == "." else ln for ln in long_lines)
    return " ".join(words.split())


def translation_files() -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(APT_LISTS / "*_i18n_Translation-en*")))


def read_translations(files: Iterable[Path]) -> dict[tuple[str, str], tuple[str, str]]:
    """(package, description md5) -> (synopsis, normalised long description)."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for path in files:
        cat = ["lz4cat", str(path)] if path.suffix == ".lz4" else ["cat", str(path)]
        text = subprocess.run(cat, check=True, capture_output=True, text=True).stdout
        for st in stanzas(text):
            if "Package" not in st or "Description-en" not in st:
                continue
            synopsis, *rest = st["Description-en"].split("\n")
            key = (st["Package"], st.get("Description-md5", ""))
            out.setdefault(key, (synopsis.strip(), normalise(rest)))
    return out


def read_dumpavail() -> list[dict[str, str]]:
    text = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True,
                          text=True).stdout
    return [st for st in stanzas(text) if "Package" in st]


def archive_dates() -> dict[str, str]:
    """InRelease file -> its Date field (ISO 8601), for the suites whose lists were read."""
    dates = {}
    for path in sorted(APT_LISTS.glob("*InRelease")):
        match = re.search(r"^Date: (.+)$", path.read_text(errors="replace"), re.MULTILINE)
        if match:
            dates[path.name] = parsedate_to_datetime(match.group(1)).isoformat()
    return dates


# -- selecting packages -------------------------------------------------------------------------
def sha1(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def candidates(avail: list[dict[str, str]],
               trans: dict[tuple[str, str], tuple[str, str]]) -> list[Package]:
    """Every package that passes the filters, in sha1(name) order, before duplicates are dropped."""
    by_name = {pkg: v for (pkg, _), v in trans.items()}
    out = []
    for st in avail:
        name = st["Package"]
        found = trans.get((name, st.get("Description-md5", ""))) or by_name.get(name)
        if name.startswith("lib") or found is None:
            continue
        synopsis, desc = found
        if not MIN_CHARS <= len(desc) <= MAX_CHARS or "transitional" in synopsis.lower():
            continue
        section = st.get("Section", "misc").split("/")[-1]
        source = st.get("Source", name).split(" ")[0]
        out.append(Package(name, source, section, synopsis, desc))
    return sorted(out, key=lambda p: sha1(p.name))


def select(packages: list[Package], n: int) -> list[Package]:
    """First n packages whose synopsis and description are both unseen (case-insensitive)."""
    seen_syn: set[str] = set()
    seen_desc: set[str] = set()
    chosen = []
    for p in packages:
        syn, desc = p.synopsis.lower(), p.description.lower()
        if syn in seen_syn or desc in seen_desc:
            continue
        seen_syn.add(syn)
        seen_desc.add(desc)
        chosen.append(p)
        if len(chosen) == n:
            break
    return chosen


# -- writing ------------------------------------------------------------------------------------
def write_jsonl_gz(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Deterministic gzip (no name, mtime 0) of one JSON object per line; returns the count."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb",
                                               compresslevel=9, mtime=0) as f:
        f.write("".join(lines).encode("utf-8"))
    return len(lines)


def debian_records(chosen: list[Package]) -> dict[str, list[dict[str, Any]]]:
    rows = [(p, hash_split(p.name, SPLITS), SECTION_TO_GROUP.get(p.section, "other"))
            for p in chosen]
    top = [s for s, _ in Counter(p.section for p in chosen).most_common(TOP_SECTIONS)]
    return {
        "queries": [{"id": p.name, "text": p.synopsis, "split": sp, "slice": g}
                    for p, sp, g in rows],
        "corpus": [{"id": p.name, "text": p.description, "split": sp, "slice": g,
                    "section": p.section, "source": p.source} for p, sp, g in rows],
        "qrels": [{"query_id": p.name, "doc_id": p.name, "relevance": 1} for p, _, _ in rows],
        "sections": [{"id": p.name, "text": p.description, "label": p.section, "split": sp,
                      "slice": g} for p, sp, g in rows if p.section in top],
    }


def counts_by(records: list[dict[str, Any]], field: str) -> dict[str, int]:
    return dict(sorted(Counter(r[field] for r in records).items()))


def build_debian(out: Path, n: int) -> dict[str, Any]:
    files = translation_files()
    if not files:
        sys.exit("no Translation-en index under /var/lib/apt/lists: run "
                 "`apt-get update -o Acquire::Languages=en` (or this script with --update)")
    trans, avail, dates = read_translations(files), read_dumpavail(), archive_dates()
    pool = candidates(avail, trans)
    chosen = select(pool, n)
    recs = debian_records(chosen)
    for name, rows in recs.items():
        write_jsonl_gz(out / f"{name}.jsonl.gz", rows)
    meta = {
        "source": "Debian archive metadata (Translation-en long descriptions, apt-cache dumpavail)",
        "archive_date": max(dates.values()),  # the newest index read: the snapshot's date
        "archive_dates": dates,
        "translation_files": [p.name for p in files],
        "packages_in_dumpavail": len(avail),
        "eligible_packages": len(pool),
        "selection": (f"non-lib* packages, long description {MIN_CHARS}..{MAX_CHARS} chars "
                      "(whitespace-normalised), no 'transitional' synopsis, sha1(name) order, "
                      f"duplicate synopses/descriptions skipped, first {n}"),
        "split_rule": ("tierserve.pruning.data.hash_split(package_name, "
                       f"{json.dumps(SPLITS)}) (sha256 of 'tierserve-split:' + name)"),
        "slice_rule": "Section -> content-type group (SECTION_GROUPS in the script), else 'other'",
        "qrels_rule": "each query (synopsis) judges its own package's long description: 1",
        "section_labels": sorted({r["label"] for r in recs["sections"]}),
        "counts": {name: len(rows) for name, rows in recs.items()},
        "counts_by_split": {name: counts_by(recs[name], "split")
                            for name in ("queries", "sections")},
        "counts_by_slice": {name: counts_by(recs[name], "slice")
                            for name in ("queries", "sections")},
        "counts_by_label": counts_by(recs["sections"], "label"),
        "command": COMMAND,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(readme(meta))
    return meta


def readme(meta: dict[str, Any]) -> str:
    c, s = meta["counts"], meta["counts_by_split"]["queries"]
    return f"""# Debian package descriptions (frozen sample)

Generated by `{meta['command']}` from Debian bookworm archive metadata dated
{meta['archive_date']} (per-suite dates in `meta.json`). Do not edit by hand.

- `queries.jsonl.gz`: {c['queries']} package synopses {{id, text, split, slice}}
- `corpus.jsonl.gz`: {c['corpus']} long descriptions {{id, text, split, slice, section, source}}
- `qrels.jsonl.gz`: {c['qrels']} judgements {{query_id, doc_id, relevance}}: {meta['qrels_rule']}
- `sections.jsonl.gz`: {c['sections']} long descriptions labelled with their Section
  (top {len(meta['section_labels'])} sections only) {{id, text, label, split, slice}}

Selection: {meta['selection']}.
Split ({s}): {meta['split_rule']}.
Slice: {meta['slice_rule']}.
Load with `tierserve.pruning.data.load_retrieval` / `load_classification`.
"""


# -- Amazon fine-food reviews from r-cran-modeldata ---------------------------------------------
def read_lazyload(data_dir: Path, names: Iterable[str]) -> dict[str, Any]:
    """Objects from an R lazy-load DB (Rdata.rdx/.rdb): each entry is 4-byte big-endian length,
    a 1-byte compression type, then the serialized object (type 'Z' = raw LZMA2 stream)."""
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.read_rds(data_dir / "Rdata.rdx")
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name in names:
        offset, length = (int(x) for x in index["variables"][name])
        chunk = blob[offset:offset + length]
        size, kind = struct.unpack(">I", chunk[:4])[0], chunk[4:5]
        if kind != b"Z":
            raise ValueError(f"{name}: unsupported lazy-load compression {kind!r}")
        raw = lzma.decompress(chunk[5:], format=lzma.FORMAT_RAW,
                              filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
        assert len(raw) == size, f"{name}: {len(raw)} bytes, header says {size}"
        with warnings.catch_warnings():  # "assumed RDS", "tbl_df read as data.frame": expected
            warnings.simplefilter("ignore", UserWarning)
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


def build_fine_foods(out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "r-cran-modeldata"], cwd=tmp, check=True,
                       capture_output=True)
        deb = next(Path(tmp).glob("r-cran-modeldata_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), f"{tmp}/x"], check=True)
        data_dir = Path(tmp, "x/usr/lib/R/site-library/modeldata/data")
        frames = read_lazyload(data_dir, ["training_data", "testing_data"])
    counts = {}
    for split, name in (("train", "training_data"), ("test", "testing_data")):
        df = frames[name]
        rows = [{"id": f"{split}-{i:04d}", "text": str(r.review), "label": str(r.score),
                 "split": split, "product": str(r.product)}
                for i, r in enumerate(df.itertuples(index=False))]
        write_jsonl_gz(out / f"{split}.jsonl.gz", rows)
        counts[split] = counts_by(rows, "label")
    meta = {"source": f"Debian r-cran-modeldata ({deb.name}), R object small_fine_foods",
            "label_rule": "modeldata's own 'score' column: 'great' vs 'other'",
            "split_rule": ("modeldata's own training_data -> train, testing_data -> test; carve "
                           "calibration/validation out of train with hash_split(id, ...)"),
            "counts_by_label": counts, "command": COMMAND}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("examples/data"))
    ap.add_argument("--n", type=int, default=4000, help="Debian packages to keep")
    ap.add_argument("--update", action="store_true",
                    help="run `apt-get update -o Acquire::Languages=en` first (needs root)")
    ap.add_argument("--skip-fine-foods", action="store_true")
    args = ap.parse_args(argv)
    if args.update:
        subprocess.run(["apt-get", "update", "-o", "Acquire::Languages=en"], check=True)
    meta = build_debian(args.out / "debian", args.n)
    print(json.dumps({k: meta[k] for k in ("archive_dates", "counts", "counts_by_split")}))
    if not args.skip_fine_foods:
        print(json.dumps(build_fine_foods(args.out / "fine_foods")["counts_by_label"]))


if __name__ == "__main__":
    main()
