"""ecrec.data: the bundled files, their checks, users' exports and each cleaning rule.

Facts about the bundled files come from /work/shared/datasets/README.md (and the
UCI release); the cleaning counts on the bundled data were recorded from
ecrec.data at the time of writing and cross-checked with plain pandas below.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ecrec import data
from ecrec.data import (
    ONLINE_RETAIL_FILE,
    ONLINE_RETAIL_SCHEMA,
    REVIEWS_FILE,
    REVIEWS_SCHEMA,
    SHA256,
    CleaningReport,
    DataFileError,
    SchemaError,
    canonical_descriptions,
    check_schema,
    clean_online_retail,
    coerce_online_retail,
    is_cancellation,
    is_non_product,
    load_clean_online_retail,
    load_online_retail,
    load_reviews,
    normalise_whitespace,
)


@pytest.fixture(scope="module")
def retail() -> pd.DataFrame:
    return load_online_retail()


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    return load_reviews()


@pytest.fixture(scope="module")
def cleaned(retail):
    return clean_online_retail(retail)


def is_text(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series.dtype) or series.dtype == object


# --- the bundled files -------------------------------------------------------


def test_bundled_files_have_the_documented_sha256():
    for name in (ONLINE_RETAIL_FILE, REVIEWS_FILE):
        assert data.sha256_of(data.DATA_DIR / name) == SHA256[name]
        assert (data.DATA_DIR / name).stat().st_size == data.SIZE[name]


def test_online_retail_shape_dtypes_and_facts(retail):
    assert retail.shape == (541_909, 8)
    assert list(retail.columns) == list(ONLINE_RETAIL_SCHEMA)
    for col in ("InvoiceNo", "StockCode", "Description", "Country"):
        assert is_text(retail[col]), col
    assert retail["Quantity"].dtype == np.int64
    assert retail["UnitPrice"].dtype == np.float64
    assert str(retail["CustomerID"].dtype) == "Int64"
    assert pd.api.types.is_datetime64_dtype(retail["InvoiceDate"].dtype)
    assert retail["StockCode"].nunique() == 4_070
    assert retail["InvoiceNo"].nunique() == 25_900
    assert int(retail.duplicated().sum()) == 5_268
    assert int(retail["InvoiceNo"].str.startswith("C").sum()) == 9_288
    assert int((retail["Quantity"] < 0).sum()) == 10_624
    assert int(retail["Description"].isna().sum()) == 1_454
    assert int(retail["CustomerID"].isna().sum()) == 135_080
    assert retail["CustomerID"].nunique() == 4_372
    assert retail["Country"].nunique() == 38
    assert retail["InvoiceDate"].min() == pd.Timestamp("2010-12-01 08:26:00")
    assert retail["InvoiceDate"].max() == pd.Timestamp("2011-12-09 12:50:00")
    assert retail.loc[0, "InvoiceNo"] == "536365" and retail.loc[0, "StockCode"] == "85123A"


def test_reviews_shape_dtypes_and_facts(reviews):
    assert reviews.shape == (23_486, 10)
    assert list(reviews.columns) == list(REVIEWS_SCHEMA)
    for col in ("Clothing ID", "Age", "Rating", "Recommended IND", "Positive Feedback Count"):
        assert reviews[col].dtype == np.int64, col
    for col in ("Title", "Review Text", "Division Name", "Department Name", "Class Name"):
        assert is_text(reviews[col]), col
    assert reviews["Clothing ID"].nunique() == 1_206
    assert reviews.isna().sum().to_dict() == {
        "Clothing ID": 0, "Age": 0, "Title": 3_810, "Review Text": 845, "Rating": 0,
        "Recommended IND": 0, "Positive Feedback Count": 0,
        "Division Name": 14, "Department Name": 14, "Class Name": 14,
    }
    assert sorted(reviews["Rating"].unique()) == [1, 2, 3, 4, 5]
    assert sorted(reviews["Recommended IND"].unique()) == [0, 1]


# --- damaged or missing files ------------------------------------------------


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A private copy of data/ that the loaders use instead of the real one."""
    for name in (ONLINE_RETAIL_FILE, REVIEWS_FILE):
        shutil.copyfile(data.DATA_DIR / name, tmp_path / name)
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    return tmp_path


def assert_helpful(message: str, name: str, *words: str) -> None:
    assert name in message, message
    assert "git checkout -- data/" + name in message, message  # how to restore
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name, loader", [(ONLINE_RETAIL_FILE, load_online_retail), (REVIEWS_FILE, load_reviews)])
def test_corrupted_copy_raises_with_expected_and_found(data_copy, name, loader):
    path = data_copy / name
    raw = bytearray(path.read_bytes())
    for i in range(1000, 1010):  # flip ten bytes in the middle of the first page
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFileError) as err:
        loader()
    found = data.sha256_of(path)
    assert_helpful(str(err.value), name, "sha256 mismatch", f"expected {SHA256[name]}",
                   f"found {found}", "corrupted or edited")


@pytest.mark.parametrize("name, loader", [(ONLINE_RETAIL_FILE, load_online_retail), (REVIEWS_FILE, load_reviews)])
def test_truncated_copy_raises_and_says_truncated(data_copy, name, loader):
    path = data_copy / name
    path.write_bytes(path.read_bytes()[: data.SIZE[name] // 2])
    with pytest.raises(DataFileError) as err:
        loader()
    assert_helpful(str(err.value), name, "truncated", f"({data.SIZE[name]:,} bytes)",
                   f"({data.SIZE[name] // 2:,} bytes)")


@pytest.mark.parametrize("name, loader", [(ONLINE_RETAIL_FILE, load_online_retail), (REVIEWS_FILE, load_reviews)])
def test_missing_file_raises(data_copy, name, loader):
    (data_copy / name).unlink()
    with pytest.raises(DataFileError) as err:
        loader()
    assert_helpful(str(err.value), name, "file not found", "expected", "found nothing")


def test_truncated_copy_without_checksum_still_fails_clearly(tmp_path):
    path = tmp_path / "mine.parquet"
    path.write_bytes((data.DATA_DIR / ONLINE_RETAIL_FILE).read_bytes()[:100_000])
    with pytest.raises(DataFileError, match="cannot be read as parquet"):
        load_online_retail(path)


def test_missing_export_and_unknown_extension(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        load_online_retail(tmp_path / "nope.csv")
    odd = tmp_path / "retail.json"
    odd.write_text("{}")
    with pytest.raises(DataFileError, match=r"unsupported extension '\.json'"):
        load_online_retail(odd)


# --- schema ------------------------------------------------------------------


def test_check_schema_accepts_the_bundled_frames(retail, reviews):
    check_schema(retail, ONLINE_RETAIL_SCHEMA, "retail")
    check_schema(reviews, REVIEWS_SCHEMA, "reviews")


def test_missing_column_raises(retail):
    with pytest.raises(SchemaError) as err:
        check_schema(retail.head().drop(columns="Country"), ONLINE_RETAIL_SCHEMA, "my.parquet")
    msg = str(err.value)
    assert msg.startswith("my.parquet: missing columns ['Country']"), msg
    assert "Expected exactly" in msg and "Fix the file" in msg


def test_extra_column_raises(retail):
    with pytest.raises(SchemaError, match=r"unexpected columns \['Revenue'\]"):
        check_schema(retail.head().assign(Revenue=1.0), ONLINE_RETAIL_SCHEMA, "x")


def test_mistyped_column_raises(retail):
    frame = retail.head().astype({"Quantity": "float64"})
    with pytest.raises(SchemaError, match=r"wrong dtypes \(Quantity: expected int64, found float64\)"):
        check_schema(frame, ONLINE_RETAIL_SCHEMA, "x")
    frame = retail.head().astype({"CustomerID": "float64"})
    with pytest.raises(SchemaError, match="CustomerID: expected Int64, found float64"):
        clean_online_retail(frame)


def test_reviews_with_wrong_schema_raise(reviews, tmp_path):
    path = tmp_path / "reviews.parquet"
    reviews.head(20).rename(columns={"Rating": "Stars"}).to_parquet(path)
    with pytest.raises(SchemaError) as err:
        load_reviews(path)
    assert "missing columns ['Rating']" in str(err.value)
    assert "unexpected columns ['Stars']" in str(err.value)


def test_export_with_missing_column_raises(retail, tmp_path):
    path = tmp_path / "export.csv"
    retail.head(5).drop(columns="UnitPrice").to_csv(path, index=False)
    with pytest.raises(SchemaError, match=r"missing columns \['UnitPrice'\]"):
        load_online_retail(path)


def test_export_with_unconvertible_values_raises(retail):
    frame = retail.head(3).astype({"CustomerID": "float64"})
    frame.loc[1, "CustomerID"] = 12345.5
    with pytest.raises(SchemaError, match="CustomerID has non-integer values"):
        coerce_online_retail(frame, "mine.xlsx")
    frame = retail.head(3).astype({"Quantity": object})
    frame.loc[0, "Quantity"] = "six"
    with pytest.raises(SchemaError, match="mine.csv: cannot convert"):
        coerce_online_retail(frame, "mine.csv")


# --- a user's own export -----------------------------------------------------


@pytest.fixture(scope="module")
def bundled_slice(retail) -> pd.DataFrame:
    """Rows with every awkward case: letters in codes, 'C' and 'A' invoices,
    missing descriptions and customers, trailing spaces."""
    idx = (
        list(range(60))
        + list(retail.index[retail["InvoiceNo"].str.startswith("C")][:10])
        + list(retail.index[retail["Description"].isna()][:5])
        + list(retail.index[retail["InvoiceNo"].str.startswith("A")])
    )
    out = retail.loc[idx].reset_index(drop=True)
    assert out["Description"].str.endswith(" ").any() and out["CustomerID"].isna().any()
    return out


def as_export(frame: pd.DataFrame) -> pd.DataFrame:
    """What the UCI spreadsheet holds: int codes where possible, float CustomerID."""
    out = frame.copy()
    for col in ("InvoiceNo", "StockCode"):
        out[col] = out[col].map(lambda v: int(v) if v.isdigit() else v).astype(object)
    out["CustomerID"] = out["CustomerID"].astype("float64")
    return out


def test_csv_export_loads_to_the_bundled_frame(bundled_slice, tmp_path):
    path = tmp_path / "Online Retail.csv"
    as_export(bundled_slice).to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_online_retail(path), bundled_slice)


def test_xlsx_export_loads_to_the_bundled_frame(bundled_slice, tmp_path):
    path = tmp_path / "Online Retail.xlsx"
    export = as_export(bundled_slice)
    assert {type(v) for v in export["InvoiceNo"]} == {int, str}  # mixed, as in the UCI file
    export.to_excel(path, index=False)
    pd.testing.assert_frame_equal(load_online_retail(path), bundled_slice)


def test_parquet_export_loads_to_the_bundled_frame(bundled_slice, tmp_path):
    path = tmp_path / "mine.parquet"
    as_export(bundled_slice).astype({"InvoiceNo": str, "StockCode": str}).to_parquet(path)
    pd.testing.assert_frame_equal(load_online_retail(path), bundled_slice)


def test_csv_keeps_na_text_and_fixes_float_codes(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365.0,NA,NA,2,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        "C536379,00123,,-1,2010-12-01 09:41:00,27.5,,United Kingdom\n"
    )
    got = load_online_retail(path)
    assert got["InvoiceNo"].tolist() == ["536365", "C536379"]
    assert got["StockCode"].tolist() == ["NA", "00123"]  # a code "NA" and leading zeros survive
    assert got.loc[0, "Description"] == "NA" and pd.isna(got.loc[1, "Description"])
    assert got["CustomerID"].tolist()[0] == 17850 and pd.isna(got.loc[1, "CustomerID"])
    assert got["InvoiceDate"].tolist() == [pd.Timestamp("2010-12-01 08:26"), pd.Timestamp("2010-12-01 09:41")]


def test_csv_in_cp1252_is_refused_or_decoded(tmp_path):
    """A Windows-1252 CSV (Excel's default) is refused with the fix, and decoded when told (issue 22.10)."""
    path = tmp_path / "excel.csv"
    text = ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            "536365,85123A,GIFT VOUCHER \u00a35.00,1,2010-12-01 08:26:00,5.0,17850,United Kingdom\n")
    path.write_bytes(text.encode("cp1252"))
    assert b"\xa3" in path.read_bytes()  # the pound sign is one byte, not UTF-8's two
    with pytest.raises(DataFileError, match=r"not utf-8 text \(byte 0xA3.*'\u00a3'.*encoding='cp1252'"):
        load_online_retail(path)
    got = load_online_retail(path, encoding="cp1252")
    assert got.loc[0, "Description"] == "GIFT VOUCHER \u00a35.00"
    # the same file in UTF-8 loads by default, to the same frame
    utf8 = tmp_path / "utf8.csv"
    utf8.write_text(text, encoding="utf-8")
    pd.testing.assert_frame_equal(load_online_retail(utf8), got)


# --- cleaning rules, each on a tiny hand-made frame ---------------------------


def make(rows: list[tuple]) -> pd.DataFrame:
    """Rows (InvoiceNo, StockCode, Description, Quantity, UnitPrice, CustomerID) -> typed frame."""
    frame = pd.DataFrame(rows, columns=["InvoiceNo", "StockCode", "Description", "Quantity", "UnitPrice", "CustomerID"])
    frame["InvoiceDate"] = pd.Timestamp("2011-01-01 10:00") + pd.to_timedelta(np.arange(len(frame)), unit="min")
    frame["Country"] = "United Kingdom"
    frame = frame.astype({"Quantity": "int64", "UnitPrice": "float64"})
    frame["CustomerID"] = frame["CustomerID"].astype("Float64").astype("Int64")
    frame = coerce_online_retail(frame[list(ONLINE_RETAIL_SCHEMA)], "hand-made")
    check_schema(frame, ONLINE_RETAIL_SCHEMA, "hand-made")
    return frame


def test_is_cancellation_marks_c_invoices_and_negative_quantities():
    frame = make([
        ("536001", "85123A", "HEART", 6, 2.55, 17850),   # sale
        ("C536002", "85123A", "HEART", -6, 2.55, 17850),  # cancellation, 'C' and < 0
        ("C536003", "85123A", "HEART", 1, 2.55, 17850),   # 'C' alone
        ("536004", "22222", "check", -5, 0.0, None),       # stock fix: < 0 alone
        ("536005", "22222", "CUP", 0, 1.0, 12345),         # zero is not negative
        ("A563185", "B", "Adjust bad debt", 1, 11062.06, None),  # 'A' is not 'C'
    ])
    assert is_cancellation(frame).tolist() == [False, True, True, True, False, False]


def test_is_non_product_codes():
    codes = ["POST", "DOT", "M", "m", "D", "S", "B", "C2", "BANK CHARGES", "AMAZONFEE", "CRUK",
             "PADS", "gift_0001_10", "gift_0001_50", "POST ",
             "85123A", "22423", "DCGS0003", "DCGSSBOY", "POSTAGE", "MM", "gift_0001"]
    frame = make([(str(536000 + i), c, "x", 1, 1.0, 1) for i, c in enumerate(codes)])
    assert is_non_product(frame).tolist() == [True] * 15 + [False] * 7


def test_clean_online_retail_counts_each_rule_in_order():
    sale = ("536001", "85123A", "WHITE HANGING HEART", 6, 2.55, 17850)
    frame = make([
        sale,
        ("C536002", "85123A", "WHITE HANGING HEART", -6, 2.55, 17850),  # cancellation
        ("536003", "22222", "check", -5, 2.0, None),   # cancellation (first rule wins)
        ("536004", "22223", "MUG", 3, 1.0, None),      # missing customer
        ("536005", "22224", "MUG", 3, 1.0, None),      # missing customer
        ("536006", "POST", "POSTAGE", 1, 18.0, 12345),  # non-product
        ("536006", "M", "Manual", 1, 3.0, 12345),        # non-product
        ("536007", "gift_0001_20", "voucher", 1, 17.0, 12345),  # non-product
        ("536008", "22225", "PEN", 1, 0.0, 12345),       # non-positive price
        ("536009", "22226", "PEN", 1, -1.0, 12345),      # non-positive price
        ("536010", "22227", "BAG", 2, 1.65, 12346),      # sale
    ])
    frame = pd.concat([frame, frame.iloc[[0, 0, 10]]], ignore_index=True)  # 3 exact duplicates
    clean, report = clean_online_retail(frame)
    assert report.rows_in == 14
    assert report.removed == {
        "cancellations": 2, "missing_customer": 2, "non_product": 3,
        "exact_duplicates": 3, "non_positive_price": 2,
    }
    assert list(report.removed) == ["cancellations", "missing_customer", "non_product",
                                    "exact_duplicates", "non_positive_price"]
    assert report.rows_out == len(clean) == 2
    assert clean["InvoiceNo"].tolist() == ["536001", "536010"]
    assert clean.index.equals(pd.RangeIndex(2))
    table = report.to_frame()
    assert table["rows_removed"].tolist() == [2, 2, 3, 3, 2]
    assert table["rows_left"].tolist() == [12, 10, 7, 4, 2]


def test_duplicates_differ_in_any_column_are_kept():
    frame = make([
        ("536001", "85123A", "HEART", 6, 2.55, 17850),
        ("536001", "85123A", "HEART", 6, 2.55, 17850),  # exact duplicate
        ("536001", "85123A", "HEART", 7, 2.55, 17850),  # other quantity: kept
        ("536001", "85123A", "HEART ", 6, 2.55, 17850),  # other spelling: kept
    ]).assign(InvoiceDate=pd.Timestamp("2011-01-01 10:00"))
    _, report = clean_online_retail(frame)
    assert report.removed["exact_duplicates"] == 1 and report.rows_out == 3


def test_canonical_description_most_frequent_stripped_spelling_with_tie_break():
    frame = make([
        ("1", "A1", "RED BAG", 1, 1.0, 1),
        ("2", "A1", "RED BAG ", 1, 1.0, 1),       # same spelling once stripped: 2 votes
        ("3", "A1", "RED BAG, LARGE", 1, 1.0, 1),
        ("4", "A1", "RED BAG, LARGE  ", 1, 1.0, 1),  # 2 votes too: tie -> alphabetical first
        ("5", "B2", "BLUE", 1, 1.0, 1),
        ("6", "B2", "AZURE", 1, 1.0, 1),          # tie 1-1 -> "AZURE"
        ("7", "C3", None, 1, 1.0, 1),             # never described
        ("8", "D4", "GREEN", 1, 1.0, 1),
        ("9", "D4", "GREEN", 1, 1.0, 1),
        ("10", "D4", "GREEN MUG", 1, 1.0, 1),     # majority wins
    ])
    canon = canonical_descriptions(frame)
    assert canon.to_dict() == {"A1": "RED BAG", "B2": "AZURE", "D4": "GREEN"}
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert canonical_descriptions(shuffled).to_dict() == canon.to_dict()
    clean, report = clean_online_retail(frame)
    assert clean["Description"].tolist()[:6] == ["RED BAG"] * 4 + ["AZURE"] * 2
    assert pd.isna(clean.loc[6, "Description"])
    assert clean["Description"].tolist()[7:] == ["GREEN"] * 3
    assert report.descriptions_unified == 3  # A1, B2 and D4 changed; C3 had nothing to change
    assert report.removed["exact_duplicates"] == 0


# --- the real cleaning report --------------------------------------------------


def test_cleaning_report_on_the_bundled_data(cleaned):
    clean, report = cleaned
    assert isinstance(report, CleaningReport)
    assert report.rows_in == 541_909
    assert report.removed == {
        "cancellations": 10_624,
        "missing_customer": 133_361,
        "non_product": 1_554,
        "exact_duplicates": 5_187,
        "non_positive_price": 33,
    }
    # 851 before whitespace was collapsed inside descriptions (issue 10, item 4)
    assert report.descriptions_unified == 955
    assert report.whitespace_normalised == 866
    assert report.rows_out == len(clean) == 391_150
    assert report.rows_in - sum(report.removed.values()) == report.rows_out
    check_schema(clean, ONLINE_RETAIL_SCHEMA, "clean")


def test_clean_data_satisfies_every_rule_by_plain_pandas(cleaned, retail):
    clean, _ = cleaned
    assert not clean["InvoiceNo"].str.startswith("C").any()
    assert (clean["Quantity"] > 0).all()
    assert clean["CustomerID"].notna().all()
    assert (clean["UnitPrice"] > 0).all()
    assert not is_non_product(clean).any()
    assert clean["Description"].notna().all()
    assert (clean.groupby("StockCode")["Description"].nunique() == 1).all()
    assert (clean["Description"] == clean["Description"].str.strip()).all()
    assert not clean["Description"].str.contains(r"\s\s|[\t\n]", regex=True).any()
    # Oracle: the same rows from plain pandas masks on the raw frame.
    keep = (
        ~retail["InvoiceNo"].str.startswith("C")
        & (retail["Quantity"] >= 0)
        & retail["CustomerID"].notna()
        & ~retail["StockCode"].str.strip().str.upper().isin(
            ["POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"])
        & ~retail["StockCode"].str.startswith("gift_0001_")
    )
    oracle = retail[keep].drop_duplicates()
    oracle = oracle[oracle["UnitPrice"] > 0]
    assert len(oracle) == len(clean)
    assert clean["CustomerID"].nunique() == oracle["CustomerID"].nunique() == 4_334
    assert clean["StockCode"].nunique() == oracle["StockCode"].nunique() == 3_659
    assert clean["InvoiceNo"].nunique() == oracle["InvoiceNo"].nunique() == 18_402
    assert clean["Quantity"].sum() == oracle["Quantity"].sum()


def test_cleaning_is_deterministic(retail, cleaned):
    clean, report = cleaned
    again, report2 = load_clean_online_retail()
    pd.testing.assert_frame_equal(clean, again)
    assert report == report2


def test_inner_whitespace_is_collapsed_and_counted():
    # issue 10, item 4: one product, two spellings that differ only by a double space
    rows = [
        ("1", "22", "SET OF 3 COLOURED  FLYING DUCKS", 1, 1.0, 1),
        ("2", "22", "SET OF 3 COLOURED FLYING DUCKS", 1, 1.0, 2),
        ("3", "23", " RED\tBAG ", 1, 1.0, 3),
        ("4", "24", "BLUE BAG", 1, 1.0, 4),
    ]
    df = pd.DataFrame(rows, columns=["InvoiceNo", "StockCode", "Description", "Quantity", "UnitPrice", "CustomerID"])
    df = df.assign(InvoiceDate=pd.Timestamp("2011-01-01"), Country="UK")[list(ONLINE_RETAIL_SCHEMA)]
    df = df.astype({"CustomerID": "Int64", "InvoiceDate": "datetime64[us]"})
    clean, report = clean_online_retail(df)
    assert clean["Description"].tolist() == [
        "SET OF 3 COLOURED FLYING DUCKS", "SET OF 3 COLOURED FLYING DUCKS", "RED BAG", "BLUE BAG",
    ]
    assert report.whitespace_normalised == 2  # the double space and the tab/edges; "BLUE BAG" untouched
    assert report.descriptions_unified == 2  # stock codes 22 and 23
    assert normalise_whitespace(pd.Series(["  A \n B  ", None])).tolist()[0] == "A B"
