"""Chapter 01 "The data": the numbers its smoke run recorded in metrics.json.

Counts are exact: they follow from the bundled files (sha256-checked) and the
cleaning rules, and tests/test_data.py checks the same counts with plain pandas.
Rates are checked to +-0.001 around the values recorded when the chapter was written.
The reviews' token statistics depend on the sampled subset (smoke size), so
their ranges are wider.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics("01_data")


def test_cleaning_counts(m):
    assert m["rows_raw"] == 541_909
    assert m["rows_clean"] == 391_150
    assert m["removed_cancellations"] == 10_624
    assert m["removed_missing_customer"] == 133_361
    assert m["removed_non_product"] == 1_554
    assert m["removed_exact_duplicates"] == 5_187
    assert m["removed_non_positive_price"] == 33
    removed = sum(v for k, v in m.items() if k.startswith("removed_"))
    assert m["rows_raw"] - removed == m["rows_clean"]
    # 851 before cleaning collapsed inner whitespace (commit 43d3975); tests/test_data.py has the same counts
    assert m["descriptions_unified"] == 955
    assert m["whitespace_normalised"] == 866


def test_users_items_invoices(m):
    assert (m["n_customers"], m["n_items"], m["n_invoices"]) == (4_334, 3_659, 18_402)
    assert m["n_pairs"] == 266_221
    assert m["matrix_density"] == pytest.approx(266_221 / (4_334 * 3_659))
    assert m["months"] == 13


def test_long_tail_repeat_and_baskets(m):
    # the top 20% of items ranked by distinct customers (the long-tail figure's ranking)
    assert m["top20pct_items_share_of_lines"] == pytest.approx(0.6531, abs=1e-3)
    assert m["items_under_5_customers_share"] == pytest.approx(0.1397, abs=1e-3)
    assert m["repeat_customer_rate"] == pytest.approx(0.6527, abs=1e-3)
    assert m["repeat_pair_rate"] == pytest.approx(0.2235, abs=1e-3)
    assert m["median_invoices_per_customer"] == 2
    assert m["median_basket_size"] == 15
    assert m["mean_basket_size"] == pytest.approx(20.99, abs=0.01)


def test_product_text(m):
    assert m["description_median_words"] == 4
    assert m["description_vocabulary"] == 2_025
    assert m["description_median_tokens"] == 5
    assert m["description_max_tokens"] == 13


def test_time_split_and_cold_start(m):
    # The cutoff is chapter 03's test start: midnight after the last sale minus 30 days.
    assert m["cutoff"] == "2011-11-10"
    assert m["rows_before_cutoff"] + m["rows_after_cutoff"] == m["rows_clean"]
    assert m["rows_after_cutoff"] == 62_753
    assert (m["test_customers"], m["test_items"]) == (1_627, 2_654)
    assert m["cold_customer_share"] == pytest.approx(252 / 1_627)
    assert m["cold_item_share"] == pytest.approx(37 / 2_654)
    assert m["cold_customer_row_share"] == pytest.approx(0.1402, abs=1e-3)
    assert m["cold_item_row_share"] == pytest.approx(0.0088, abs=1e-3)


def test_reviews(m):
    assert m["reviews_rows"] == 23_486
    assert m["reviews_without_text"] == 845
    assert m["reviews_recommend_rate"] == pytest.approx(19_314 / 23_486)
    expected = {"1": 16 / 842, "2": 94 / 1_565, "3": 1_189 / 2_871, "4": 4_909 / 5_077, "5": 13_106 / 13_131}
    assert m["reviews_recommend_rate_by_rating"] == pytest.approx(expected)
    assert m["reviews_median_words"] == 59
    assert m["reviews_tokenized"] == 2_000
    assert 65 <= m["reviews_median_tokens"] <= 85
    assert 0.02 <= m["reviews_share_over_128_tokens"] <= 0.10


def test_simulated_catalogue_refresh(m):
    # ecrec.cold_start at the cutoff: items sold on both sides, 20% of them held out (seed 42)
    r = m["simulated_refresh"]
    assert (r["candidates"], r["natural_cold"], r["share"], r["seed"]) == (2_617, 37, 0.2, 42)
    assert r["held_out"] == round(0.2 * r["candidates"]) == 523
    assert r["natural_cold"] == round(m["cold_item_share"] * m["test_items"])  # the book's one definition
    assert r["test_start"].startswith(m["cutoff"])
    # purchase events (invoice x item) in the test window, and the held-out items' share of them
    assert r["test_events"] == 61_490
    assert 0.12 < r["test_events_held_out"] / r["test_events"] < 0.28


def test_lesson_is_computed_from_the_run(m):
    assert f"{100 * m['cold_item_share']:.1f}%" in m["lesson"]
    assert f"{m['simulated_refresh']['held_out']:,}" in m["lesson"]
