"""Load the book's two real datasets, checked, and clean Online Retail.

Every loader verifies what it reads before returning it: the sha256 of the
bundled file, and the schema (column names and dtypes) of every frame. A
corrupted, truncated or edited file raises :class:`DataFileError`; a frame with
missing, extra or mistyped columns raises :class:`SchemaError`. Both messages
name the file, what was expected, what was found, and how to fix it.

Datasets (provenance and licences in ``data/README.md``):

* ``online_retail.parquet``: UCI "Online Retail" (Chen, Sain and Guo, 2012),
  CC BY 4.0, 541,909 rows, one row per invoice line.
* ``womens_clothing_reviews.parquet``: "Women's E-Commerce Clothing Reviews"
  (Brooks, 2018), CC0, 23,486 rows, one row per review.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

ONLINE_RETAIL_FILE = "online_retail.parquet"
REVIEWS_FILE = "womens_clothing_reviews.parquet"

SHA256 = {
    ONLINE_RETAIL_FILE: "529dc689ffbdc3d2f84d3e2a3d89cccf86a941d1cd4cf9c4a0d9501db0535930",
    REVIEWS_FILE: "92931c3e9e6f8470100ed782a0b5d9172b9af163bdb4320f3c8fc88a20584521",
}

# Logical dtypes: "text" accepts pandas 2's object and pandas 3's str dtype.
ONLINE_RETAIL_SCHEMA: dict[str, str] = {
    "InvoiceNo": "text",
    "StockCode": "text",
    "Description": "text",
    "Quantity": "int64",
    "InvoiceDate": "datetime",
    "UnitPrice": "float64",
    "CustomerID": "Int64",
    "Country": "text",
}

REVIEWS_SCHEMA: dict[str, str] = {
    "Clothing ID": "int64",
    "Age": "int64",
    "Title": "text",
    "Review Text": "text",
    "Rating": "int64",
    "Recommended IND": "int64",
    "Positive Feedback Count": "int64",
    "Division Name": "text",
    "Department Name": "text",
    "Class Name": "text",
}

# Size in bytes of the bundled files: a truncated copy is named as such.
SIZE = {
    ONLINE_RETAIL_FILE: 3_179_642,
    REVIEWS_FILE: 3_006_517,
}

# The dtype pandas gives a column of strings: ``str`` under pandas 3, ``object`` under pandas 2.
TEXT_DTYPE = pd.Series(["a"]).dtype

RESTORE_HINT = (
    "Restore the original with `git checkout -- data/{name}` (or re-download it "
    "as data/README.md describes)."
)


class DataFileError(ValueError):
    """A data file is missing, unreadable, truncated, or has the wrong sha256."""


class SchemaError(ValueError):
    """A frame has missing, extra or mistyped columns."""


def sha256_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in ``chunk_size``-byte chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(series: pd.Series, kind: str) -> bool:
    dtype = series.dtype
    if kind == "text":
        return pd.api.types.is_string_dtype(dtype) or dtype.kind == "O"
    if kind == "datetime":
        return pd.api.types.is_datetime64_dtype(dtype)
    if kind == "Int64":
        return str(dtype) == "Int64"
    return str(dtype) == kind


def check_schema(df: pd.DataFrame, schema: dict[str, str], source: str) -> None:
    """Raise :class:`SchemaError` unless ``df`` has exactly ``schema``'s columns and dtypes.

    ``schema`` maps column name to a logical dtype: ``"text"`` (object or
    pandas' ``str``), ``"datetime"`` (any datetime64 unit), ``"Int64"``
    (nullable integer) or a numpy dtype name such as ``"int64"``.
    """
    missing = [c for c in schema if c not in df.columns]
    extra = [c for c in df.columns if c not in schema]
    wrong = [
        f"{c}: expected {schema[c]}, found {df[c].dtype}"
        for c in schema
        if c in df.columns and not _matches(df[c], schema[c])
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        if wrong:
            parts.append("wrong dtypes (" + "; ".join(wrong) + ")")
        raise SchemaError(
            f"{source}: " + ", ".join(parts) + f". Expected exactly {schema}. "
            "Fix the file or its export so that it has these columns and types."
        )


def _read_verified_parquet(name: str, path: str | Path | None, verify_checksum: bool) -> pd.DataFrame:
    bundled = path is None
    path = Path(path) if path is not None else DATA_DIR / name
    hint = RESTORE_HINT.format(name=name)
    if not bundled and not verify_checksum:
        hint = f"Check the path, or pass None to use the bundled data/{name}."
    if not path.is_file():
        raise DataFileError(
            f"{path}: file not found (expected the {SIZE[name]:,}-byte parquet file {name}, "
            f"found nothing at that path). {hint}"
        )
    if verify_checksum:
        found = sha256_of(path)
        if found != SHA256[name]:
            size = path.stat().st_size
            what = "truncated" if size < SIZE[name] else "corrupted or edited"
            raise DataFileError(
                f"{path}: sha256 mismatch, expected {SHA256[name]} ({SIZE[name]:,} bytes), "
                f"found {found} ({size:,} bytes); the file looks {what}. {hint}"
            )
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataFileError(
            f"{path}: cannot be read as parquet ({type(exc).__name__}: {exc}). {hint}"
        ) from exc


def load_online_retail(
    path: str | Path | None = None, *, verify_checksum: bool | None = None, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Load UCI Online Retail as a typed frame, one row per invoice line.

    Args:
        path: ``None`` for the bundled ``data/online_retail.parquet``, or a
            user's own export of the UCI file as ``.parquet``, ``.csv``,
            ``.xlsx`` or ``.xls``. Exports are coerced to the same types:
            InvoiceNo may come as int or str, CustomerID as float.
        verify_checksum: check the sha256 of the file. Defaults to ``True``
            for the bundled file and ``False`` for a user's export.
        encoding: the text encoding of a ``.csv`` export (ignored otherwise).
            Decoding is strict: a file in another encoding (Excel's "CSV"
            saves Windows-1252, where "£" is the byte 0xA3) is refused rather
            than loaded with replacement characters; pass ``"cp1252"`` for it.

    Returns:
        541,909 x 8 frame (bundled file) with columns InvoiceNo, StockCode,
        Description, Country (text), Quantity (int64), InvoiceDate
        (datetime64), UnitPrice (float64, pounds), CustomerID (Int64).

    Raises:
        DataFileError: missing, unreadable or corrupted file, wrong sha256, or
            a CSV that is not valid ``encoding`` text (the message names the
            byte and the fix).
        SchemaError: missing, extra or mistyped columns.
    """
    bundled = path is None
    if verify_checksum is None:
        verify_checksum = bundled
    if bundled or Path(path).suffix.lower() == ".parquet":
        df = _read_verified_parquet(ONLINE_RETAIL_FILE, path, verify_checksum)
        source = str(path or DATA_DIR / ONLINE_RETAIL_FILE)
        if not bundled:
            df = coerce_online_retail(df, source)
    else:
        df = _read_export(Path(path), encoding)
        df = coerce_online_retail(df, str(path))
        source = str(path)
    check_schema(df, ONLINE_RETAIL_SCHEMA, source)
    return df


def _read_export(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    if not path.is_file():
        raise DataFileError(
            f"{path}: file not found. Pass the path of your Online Retail export "
            "(.parquet, .csv, .xlsx or .xls), or None for the bundled copy."
        )
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx", ".xls"):
        raise DataFileError(
            f"{path}: unsupported extension {suffix!r}; use .parquet, .csv, .xlsx or .xls."
        )
    try:
        if suffix == ".csv":
            # Codes as text so that leading zeros and letters survive; only empty
            # cells are missing (a code or description "NA" stays a string).
            return pd.read_csv(
                path,
                dtype={"InvoiceNo": str, "StockCode": str, "Description": str, "Country": str},
                keep_default_na=False,
                na_values=[""],
                encoding=encoding,  # strict: a wrong encoding fails here instead of turning "£" into "\ufffd"
            )
        # Excel cells keep their own types (the UCI file mixes int and str
        # invoice numbers and stock codes); coerce_online_retail converts each one.
        return pd.read_excel(path)
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1]
        raise DataFileError(
            f"{path}: is not {encoding} text (byte 0x{bad.hex().upper()} at offset {exc.start} cannot be decoded; "
            f"in Windows-1252/Latin-1, the encoding of Excel's 'CSV' export, that byte is {bad.decode('cp1252', 'replace')!r}). "
            "Pass encoding='cp1252' (or 'latin-1') to load_online_retail, or re-save the file as UTF-8."
        ) from exc
    except Exception as exc:
        raise DataFileError(f"{path}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {exc}).") from exc


_INTEGRAL_TEXT = re.compile(r"^[0-9]+\.0+$")


def _cell_text(value, code: bool) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else str(value)
    text = str(value)
    if code and _INTEGRAL_TEXT.match(text):  # "536365.0" written by a float column
        text = text.split(".", 1)[0]
    return text


def _as_text(series: pd.Series, code: bool = False) -> pd.Series:
    """Cells of any type as text: 536365 and 536365.0 become '536365', missing stays missing.

    ``code=True`` also turns the strings "536365.0" (a float column written to
    CSV) into "536365". Returns a Series of :data:`TEXT_DTYPE`.
    """
    values = [_cell_text(v, code) for v in series.tolist()]
    return pd.Series(values, index=series.index, dtype=object).astype(TEXT_DTYPE)


def coerce_online_retail(df: pd.DataFrame, source: str = "export") -> pd.DataFrame:
    """Coerce a user's export of Online Retail to the bundled file's types.

    Raises:
        SchemaError: a column is missing or extra, or its values cannot be
            converted (for example a CustomerID of 123.5).
    """
    check_columns = set(ONLINE_RETAIL_SCHEMA)
    if set(df.columns) != check_columns:
        check_schema(df, ONLINE_RETAIL_SCHEMA, source)  # raises with the details
    out = pd.DataFrame(index=df.index)
    try:
        for col in ("InvoiceNo", "StockCode", "Description", "Country"):
            out[col] = _as_text(df[col], code=col in ("InvoiceNo", "StockCode"))
        quantity = pd.to_numeric(df["Quantity"])
        if quantity.isna().any() or (quantity % 1 != 0).any():
            raise ValueError("Quantity has missing or non-integer values")
        out["Quantity"] = quantity.astype("int64")
        # The bundled file's unit is microseconds; exports get the same.
        out["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"]).astype("datetime64[us]")
        out["UnitPrice"] = pd.to_numeric(df["UnitPrice"]).astype("float64")
        customer = pd.to_numeric(df["CustomerID"])
        frac = customer.dropna() % 1
        if (frac != 0).any():
            raise ValueError("CustomerID has non-integer values")
        out["CustomerID"] = customer.astype("Int64")
    except (ValueError, TypeError) as exc:
        raise SchemaError(
            f"{source}: cannot convert to the Online Retail types {ONLINE_RETAIL_SCHEMA} ({exc}). "
            "Check that the columns hold what their names say."
        ) from exc
    return out[list(ONLINE_RETAIL_SCHEMA)].reset_index(drop=True)


def load_reviews(path: str | Path | None = None, *, verify_checksum: bool | None = None) -> pd.DataFrame:
    """Load Women's E-Commerce Clothing Reviews, 23,486 x 10, one row per review.

    Raises:
        DataFileError: missing, unreadable or corrupted file, or wrong sha256.
        SchemaError: missing, extra or mistyped columns.
    """
    if verify_checksum is None:
        verify_checksum = path is None
    df = _read_verified_parquet(REVIEWS_FILE, path, verify_checksum)
    check_schema(df, REVIEWS_SCHEMA, str(path or DATA_DIR / REVIEWS_FILE))
    return df


# --- cleaning --------------------------------------------------------------

# Stock codes that are charges, fees or bookkeeping entries rather than products:
# postage (POST, DOT, C2 carriage), manual entries (M), discounts (D), samples
# (S), bank charges, Amazon fees, CRUK commission, bad-debt adjustments (B),
# the 0.001-priced "pads" filler line, and gift vouchers.
NON_PRODUCT_CODE = re.compile(
    r"^(POST|DOT|M|C2|D|S|B|BANK CHARGES|AMAZONFEE|CRUK|PADS|gift_0001_\d+)$", re.IGNORECASE
)


@dataclass
class CleaningReport:
    """How many rows each cleaning rule removed, in the order applied."""

    rows_in: int
    removed: dict[str, int] = field(default_factory=dict)
    descriptions_unified: int = 0  # stock codes whose description was changed
    whitespace_normalised: int = 0  # distinct raw descriptions changed by collapsing/trimming whitespace
    rows_out: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per rule: rows removed and rows left after it."""
        left = self.rows_in
        rows = []
        for rule, n in self.removed.items():
            left -= n
            rows.append({"rule": rule, "rows_removed": n, "rows_left": left})
        return pd.DataFrame(rows)


def is_cancellation(df: pd.DataFrame) -> pd.Series:
    """Invoice numbers starting with 'C', or negative quantities (returns, stock fixes)."""
    return df["InvoiceNo"].str.startswith("C").fillna(False).astype(bool) | (df["Quantity"] < 0)


def is_non_product(df: pd.DataFrame) -> pd.Series:
    """Stock codes that are postage, fees, discounts, samples, vouchers... (see NON_PRODUCT_CODE)."""
    return df["StockCode"].str.strip().str.fullmatch(NON_PRODUCT_CODE).fillna(False).astype(bool)


def normalise_whitespace(text: pd.Series) -> pd.Series:
    """Trim and collapse every run of whitespace (spaces, tabs, newlines) to one space.

    "SET OF 3 COLOURED  FLYING DUCKS " becomes "SET OF 3 COLOURED FLYING DUCKS",
    so one product has one spelling. Missing values stay missing.

    Returns:
        Series of the same index and text dtype.
    """
    return text.str.replace(r"\s+", " ", regex=True).str.strip()


def canonical_descriptions(df: pd.DataFrame) -> pd.Series:
    """One description per StockCode: the most frequent whitespace-normalised spelling.

    Spellings are compared after :func:`normalise_whitespace` (trimmed, inner
    runs of whitespace collapsed). Ties go to the alphabetically first
    spelling, so the result is deterministic.

    Returns:
        Series indexed by StockCode, text values.

    Raises:
        KeyError: ``df`` lacks StockCode or Description.
    """
    text = normalise_whitespace(df["Description"])
    counts = (
        pd.DataFrame({"StockCode": df["StockCode"], "Description": text})
        .dropna()
        .value_counts()
        .rename("n")
        .reset_index()
        .sort_values(["StockCode", "n", "Description"], ascending=[True, False, True])
    )
    return counts.drop_duplicates("StockCode").set_index("StockCode")["Description"]


def clean_online_retail(df: pd.DataFrame) -> tuple[pd.DataFrame, CleaningReport]:
    """Turn the raw log into purchases of real products by known customers.

    Rules, applied in this order (each is a named decision, see chapter 01):

    1. ``cancellations``: InvoiceNo starting with 'C', or Quantity < 0.
    2. ``missing_customer``: no CustomerID, so the row cannot be tied to a user.
    3. ``non_product``: stock codes in :data:`NON_PRODUCT_CODE`.
    4. ``exact_duplicates``: rows identical in every column (keep the first).
    5. ``non_positive_price``: UnitPrice <= 0 (free samples, corrections).
    6. canonical description: whitespace is normalised (trimmed, inner runs
       collapsed to one space, :func:`normalise_whitespace`; the report's
       ``whitespace_normalised`` counts the distinct raw descriptions this
       changed), then each StockCode gets one description
       (:func:`canonical_descriptions`); removes no rows, the report's
       ``descriptions_unified`` counts the stock codes it changed.

    Args:
        df: frame with the schema of :func:`load_online_retail`.

    Returns:
        (cleaned frame with a fresh RangeIndex, :class:`CleaningReport`).

    Raises:
        SchemaError: ``df`` does not have the Online Retail schema.
    """
    check_schema(df, ONLINE_RETAIL_SCHEMA, "clean_online_retail input")
    report = CleaningReport(rows_in=len(df))
    rules = [
        ("cancellations", is_cancellation),
        ("missing_customer", lambda d: d["CustomerID"].isna()),
        ("non_product", is_non_product),
        ("exact_duplicates", lambda d: d.duplicated(keep="first")),
        ("non_positive_price", lambda d: d["UnitPrice"] <= 0),
    ]
    for name, rule in rules:
        drop = np.asarray(rule(df), dtype=bool)
        report.removed[name] = int(drop.sum())
        df = df.loc[~drop]
    normalised = normalise_whitespace(df["Description"])
    ws_changed = df["Description"].ne(normalised) & df["Description"].notna()
    report.whitespace_normalised = int(df.loc[ws_changed, "Description"].nunique())
    canon = canonical_descriptions(df)
    new = df["StockCode"].map(canon)
    changed = df["Description"].ne(new) & new.notna()
    report.descriptions_unified = int(df.loc[changed, "StockCode"].nunique())
    df = df.assign(Description=new.fillna(normalised))
    df = df.reset_index(drop=True)
    report.rows_out = len(df)
    return df, report


def load_clean_online_retail(path: str | Path | None = None) -> tuple[pd.DataFrame, CleaningReport]:
    """:func:`load_online_retail` then :func:`clean_online_retail`.

    Raises:
        DataFileError, SchemaError: as :func:`load_online_retail`.
    """
    return clean_online_retail(load_online_retail(path))
