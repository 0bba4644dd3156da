"""Fields of view as screens store them: channel files, CellProfiler LoadData CSVs, plate maps and
instrument file names. Each becomes a :class:`Field` (its channel files in output order, its place
on the plate, its treatment), checked before any long work so a bad row fails in a second.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from napari_cellflux.data.cells import FALSE_WORDS, TRUE_WORDS, read_text_table
from napari_cellflux.errors import InputError

Warn = Callable[[str], None]
LOADDATA_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
PLATE_MAP_COLUMNS = ("well", "perturbation", "is_control")
# Built-in file-name patterns (named groups: well, or row + col; site; channel; case-insensitive).
NAME_PATTERNS = {
    # MetaXpress / BBBC: [anything_]<well>[_s<site>]_w<channel><UUID>.tif, e.g. Week1_150607_C02_s3_w1<UUID>.tif
    "imagexpress": r"(?i)(?:.*?_)??(?P<well>[a-z]{1,2}\d{1,2})(?:_s(?P<site>\d+))?_w(?P<channel>\d)[0-9a-f-]*\.tiff?",
    # Harmony export: r<row>c<col>f<field>p<plane>-ch<channel>sk1fk1fl1.tiff, e.g. r01c01f01p01-ch1sk1fk1fl1.tiff
    "opera": r"(?i)r(?P<row>\d{2})c(?P<col>\d{2})f(?P<site>\d+)p(?P<plane>\d+)-ch(?P<channel>\d+)sk\d+fk\d+fl\d+\.tiff?",
}


@dataclass(frozen=True)
class Treatment:
    """What a field's cells were treated with, as cells.csv records it."""

    perturbation: str
    is_control: bool
    batch: str | None = None  # None: the plate


@dataclass(frozen=True)
class Field:
    """One field of view. files: one (H, W) file per channel in output order, or one multi-channel
    file (then ``select`` picks and orders its channels); channels: their names; origin: what an
    error names (the file, or "load_data.csv line 7")."""

    files: tuple[Path, ...]
    channels: tuple[str, ...] = ()
    plate: str = ""
    well: str = ""
    site: str = ""
    origin: str = ""
    treatment: Treatment | None = None
    select: tuple[int, ...] | None = None

LOADDATA_FIX = "save it as a CSV with a header (FileName_<Channel>, PathName_<Channel>, Metadata_Well, ...)"
PLATE_MAP_FIX = "save it as a CSV with the header well,perturbation,is_control[,batch]"


def normalize_well(text: str) -> str | None:
    """'a1', 'A01', 'r01c01' -> 'A01' (rows A..Z, AA..AF for 1536 wells); None if not a well name."""
    text = str(text).strip()
    if m := re.fullmatch(r"(?i)r(\d{1,2})c(\d{1,2})", text):
        row, col = int(m.group(1)), int(m.group(2))
        letters = chr(64 + row) if row <= 26 else "A" + chr(64 + row - 26)
        return f"{letters}{col:02d}" if 1 <= row <= 32 and col >= 1 else None
    if m := re.fullmatch(r"([A-Za-z]{1,2})(\d{1,2})", text):
        return f"{m.group(1).upper()}{int(m.group(2)):02d}" if int(m.group(2)) >= 1 else None
    return None


def choose_channels(spec: str | None, model_names: Sequence[str] | None) -> list[tuple[str, str]] | None:
    """(name, key) per output channel from ``--channels`` "DNA,ER" or "DNA=5,ER=4" (key: the LoadData
    column suffix or the file name's channel; default the name), put in the model's order when a
    model names its channels; None when neither says (take what the files hold)."""
    if spec is None:
        return None if model_names is None else [(n, n) for n in model_names]
    items = [item.strip() for item in spec.split(",") if item.strip()]
    plan = [tuple(part.strip() for part in item.split("=", 1)) if "=" in item else (item, item) for item in items]
    names = [name.casefold() for name, _ in plan]
    if not plan or len(set(names)) != len(names) or not all(all(pair) for pair in plan):
        raise InputError(f"--channels {spec!r}: name each channel once, e.g. DNA,Tubulin,Actin or DNA=1,Tubulin=2,Actin=3")
    if model_names is None:
        return plan
    if sorted(names) != sorted(n.casefold() for n in model_names):
        raise InputError(f"--channels {spec!r}: the model takes {', '.join(model_names)}; name exactly these "
                         f"(in any order, case-insensitive), e.g. {','.join(f'{n}=...' for n in model_names)}")
    return [(model, plan[names.index(model.casefold())][1]) for model in model_names]


def _match_key(key: str, available: Sequence[str]) -> str | None:
    """The available channel key that ``key`` names: same text (case-insensitive), JUMP's "Orig"
    prefix (OrigDNA), or the same number (5 = 05)."""
    for option in available:
        a, k = option.casefold(), key.casefold()
        if a == k or a == "orig" + k or (a.isdigit() and k.isdigit() and int(a) == int(k)):
            return option
    return None


def _keys(plan: list[tuple[str, str]] | None, available: Sequence[str], source: str, how: str) -> list[tuple[str, str]]:
    if plan is None:  # every channel, named as the files name it (JUMP's OrigDNA -> DNA)
        return [(key[4:] if key.casefold().startswith("orig") and len(key) > 4 else key, key) for key in available]
    missing = [key for _, key in plan if _match_key(key, available) is None]
    if missing:
        raise InputError(f"{source}: no channel {', '.join(missing)} (it has {', '.join(available) or 'none'}); "
                         f"say which is which with --channels NAME={how},... (in the model's order, if any)")
    return [(name, _match_key(key, available)) for name, key in plan]


def fields_from_files(files: Sequence[Path], plan: list[tuple[str, str]] | None, spec: str | None) -> Field:
    """The field of positional files: several = its channels, one file each; one = a (multi-channel)
    image. ``--channels`` names the channels in the files' order; with a model they are put in the
    model's order by name, else the files are taken to be in the model's order."""
    files = tuple(Path(p) for p in files)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"field image {path} does not exist")
    given = [name.casefold() for name, _ in choose_channels(spec, None)] if spec else []
    if given and len(files) > 1 and len(given) != len(files):
        raise InputError(f"--channels names {len(given)} channels for {len(files)} files; name one channel per file, in file order")
    names = tuple(name for name, _ in plan) if plan else ()
    select = tuple(given.index(n.casefold()) for n in names) if given and [n.casefold() for n in names] != given else None
    if len(files) > 1 and select is not None:
        files, select = tuple(files[i] for i in select), None
    return Field(files, names, origin=str(files[0]) if len(files) == 1 else ", ".join(map(str, files)), select=select)


def is_loaddata(csv: Path) -> bool:
    """True if ``csv``'s header is a LoadData table's (FileName_<channel> and Metadata_Well columns)."""
    try:
        columns = [c.strip() for c in pd.read_csv(csv, nrows=0).columns]
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return "Metadata_Well" in columns and any(c.startswith("FileName_") for c in columns)


def fields_from_loaddata(csv: Path, plan: list[tuple[str, str]] | None) -> list[Field]:
    """The fields of a CellProfiler LoadData CSV (FileName_<C>, PathName_<C>, Metadata_Plate / _Well /
    _Site); a relative PathName is relative to the CSV's folder."""
    table = read_text_table(csv, "LoadData CSV", LOADDATA_FIX)
    available = [c[len("FileName_"):] for c in table.columns if c.startswith("FileName_")]
    missing = [] if available else ["FileName_<channel>"]
    missing += [f"PathName_{c}" for c in available if f"PathName_{c}" not in table.columns]
    missing += [c for c in LOADDATA_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{csv}: LoadData CSV lacks columns {missing}; it needs "
                         "FileName_<channel> and PathName_<channel> per channel and " + ", ".join(LOADDATA_COLUMNS))
    channels = _keys(plan, available, str(csv), "COLUMN")
    fields = []
    for i, row in table.iterrows():
        origin = f"{csv} line {i + 2}"
        files = []
        for name, key in channels:
            folder, file = row[f"PathName_{key}"].strip(), row[f"FileName_{key}"].strip()
            path = Path(folder) / file if Path(folder).is_absolute() else csv.parent / folder / file
            if not file or not path.is_file():
                raise InputError(f"{origin}: the {name} file {path} does not exist; fix PathName_{key} / FileName_{key} "
                                 "or copy the image there")
            files.append(path)
        well = normalize_well(row["Metadata_Well"])
        if well is None:
            raise InputError(f"{origin}: Metadata_Well {row['Metadata_Well']!r} is not a well name; write e.g. A01")
        site = row["Metadata_Site"].strip()
        fields.append(Field(tuple(files), tuple(n for n, _ in channels), row["Metadata_Plate"].strip(), well,
                            str(int(site)) if site.isdigit() else site, origin))
    return fields


def fields_from_images(folder: Path, pattern: str, plan: list[tuple[str, str]] | None, warn: Warn) -> list[Field]:
    """The fields of an image folder (not its subfolders) whose file names ``pattern`` parses: a
    built-in name (NAME_PATTERNS) or a regex with named groups well (or row and col), channel,
    and optionally site."""
    if not folder.is_dir():
        raise InputError(f"--images {folder}: not a folder; give the folder that holds the plate's TIFFs")
    regex = _compile(NAME_PATTERNS.get(pattern, pattern))
    found: dict[tuple[str, str], dict[str, Path]] = {}
    unmatched = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        m = regex.fullmatch(path.name)
        if m is None:
            unmatched += [path.name] if path.suffix.lower() in (".tif", ".tiff") else []
            continue
        parts = m.groupdict()
        well = normalize_well(parts["well"] if parts.get("well") else f"r{parts['row']}c{parts['col']}")
        if well is None:
            raise InputError(f"{path}: {parts.get('well') or parts['row'] + '/' + parts['col']} is not a well; check --name-pattern")
        site, channel = str(int(parts["site"])) if parts.get("site") else "1", parts["channel"]
        channels = found.setdefault((well, site), {})
        if channel in channels:
            raise InputError(f"{path} and {channels[channel].name} are both well {well} site {site} channel {channel}; "
                             "keep one (e.g. one z-plane) or give a --name-pattern that tells them apart")
        channels[channel] = path
    if not found:
        example = f" (e.g. {unmatched[0]})" if unmatched else ""
        raise InputError(f"--images {folder}: no file name matches --name-pattern {pattern!r}{example}; "
                         f"use one of {', '.join(NAME_PATTERNS)} or a regex with groups well, site, channel")
    if unmatched:
        warn(f"{len(unmatched)} TIFF file(s) in {folder} do not match the name pattern and are ignored (e.g. {unmatched[0]})")
    available = sorted({c for chans in found.values() for c in chans}, key=lambda c: (len(c), c))
    channels = _keys(plan, available, f"--images {folder}", "CHANNEL")
    fields = []
    for (well, site), files in sorted(found.items()):
        lacking = [name for name, key in channels if key not in files]
        if lacking:
            raise InputError(f"{folder}: well {well} site {site} has no {', '.join(lacking)} file (it has "
                             f"{', '.join(p.name for p in files.values())}); add the file or leave the field out")
        fields.append(Field(tuple(files[key] for _, key in channels), tuple(n for n, _ in channels), folder.name,
                            well, site, f"{folder} well {well} site {site}"))
    return fields


def _compile(pattern: str) -> re.Pattern:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(f"--name-pattern {pattern!r}: not a regular expression ({err})") from None
    groups = set(regex.groupindex)
    if "channel" not in groups or not ({"well"} <= groups or {"row", "col"} <= groups):
        raise InputError(f"--name-pattern {pattern!r}: needs named groups (?P<well>...) (or (?P<row>...) and "
                         "(?P<col>...)) and (?P<channel>...), optionally (?P<site>...)")
    return regex


def read_plate_map(csv: Path) -> dict[str, tuple[Treatment, int]]:
    """well -> (treatment, CSV line) from a plate map with columns well, perturbation, is_control[, batch]."""
    table = read_text_table(csv, "plate map", PLATE_MAP_FIX)
    missing = [c for c in PLATE_MAP_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{csv}: plate map lacks columns {missing}; its header must hold well,perturbation,is_control[,batch]")
    wells: dict[str, tuple[Treatment, int]] = {}
    for i, row in table.iterrows():
        line, well, flag = i + 2, normalize_well(row["well"]), row["is_control"].strip().lower()
        if well is None:
            raise InputError(f"{csv} line {line}: well {row['well']!r} is not a well name; write e.g. A01 or B7")
        if well in wells:
            raise InputError(f"{csv} line {line}: well {well} is listed again (first on line {wells[well][1]}); keep one row per well")
        if flag not in TRUE_WORDS | FALSE_WORDS:
            raise InputError(f"{csv} line {line}: is_control = {row['is_control']!r}; write true or false")
        if not row["perturbation"].strip():
            raise InputError(f"{csv} line {line}: well {well} has no perturbation; name it (e.g. DMSO)")
        batch = row["batch"].strip() if "batch" in table.columns and row["batch"].strip() else None
        wells[well] = (Treatment(row["perturbation"].strip(), flag in TRUE_WORDS, batch), line)
    return wells


def apply_plate_map(fields: list[Field], csv: Path, warn: Warn) -> list[Field]:
    """Give each field its well's treatment. A map row without images is an error (a mistyped well
    or the wrong folder would silently lose a treatment); images without a row are left out with a
    warning (leaving wells out of the map is how one skips empty or failed wells)."""
    wells = read_plate_map(csv)
    imaged = {f.well for f in fields}
    lacking = [(well, line) for well, (_, line) in wells.items() if well not in imaged]
    if lacking:
        listed = ", ".join(f"{w} (line {line})" for w, line in lacking[:5]) + (" ..." if len(lacking) > 5 else "")
        raise InputError(f"{csv}: {len(lacking)} plate-map well(s) have no images: {listed}; remove those rows, "
                         "or check --images / --name-pattern / the LoadData CSV")
    unmapped = sorted({f.well for f in fields if f.well not in wells})
    if unmapped:
        warn(f"wells {', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''} have images but no row in {csv}: "
             "their treatment is unknown, so they are left out; add rows to include them")
    return [replace(f, treatment=wells[f.well][0]) for f in fields if f.well in wells]


def find_fields(
    files: Sequence[Path] = (),
    *,
    loaddata: Path | None = None,
    images: Path | None = None,
    plate_map: Path | None = None,
    name_pattern: str | None = None,
    channels: str | None = None,
    model_channels: Sequence[str] | None = None,
    perturbation: str | None = None,
    batch: str | None = None,
    is_control: bool = False,
    warn: Warn | None = None,
) -> list[Field]:
    """Every field to extract, each with its treatment, from exactly one source: channel files,
    ``loaddata``, or ``images`` (+ ``plate_map``). The plate map or ``perturbation`` / ``batch`` /
    ``is_control`` give the treatment; batch defaults to the plate."""
    warn = warn or (lambda line: warnings.warn(line, stacklevel=3))
    sources = [name for name, given in (("FIELD files", bool(files)), ("--loaddata", loaddata), ("--images", images)) if given]
    if len(sources) != 1:
        raise InputError(f"give the images one way: FIELD files, --loaddata CSV or --images DIR with --plate-map "
                         f"(got {' and '.join(sources) or 'none'})")
    if name_pattern and not images:
        raise InputError("--name-pattern parses the file names of --images DIR; drop it or give --images")
    if images and not plate_map:
        raise InputError("--images needs --plate-map CSV (well,perturbation,is_control[,batch]) to know each well's treatment")
    if plate_map and files:
        raise InputError("--plate-map gives the treatment of plate wells; for FIELD files give --perturbation and --batch")
    if plate_map and (perturbation or is_control):
        raise InputError("--plate-map gives each well's perturbation and control flag; drop --perturbation / --control")
    if not plate_map and not perturbation:
        raise InputError("--perturbation: name what the field was treated with (e.g. DMSO), or give --plate-map")
    if files and not batch:
        raise InputError("--batch: name the batch / plate of the field (controls are paired within a batch)")
    plan = choose_channels(channels, model_channels)
    if files:
        found = [fields_from_files(files, plan, channels)]
    elif loaddata:
        found = fields_from_loaddata(Path(loaddata), plan)
    else:
        found = fields_from_images(Path(images), name_pattern or "imagexpress", plan, warn)
    if plate_map:
        found = apply_plate_map(found, Path(plate_map), warn)
    else:
        found = [replace(f, treatment=Treatment(perturbation, is_control)) for f in found]
    return [replace(f, treatment=replace(f.treatment, batch=f.treatment.batch or batch or f.plate)) for f in found]
