"""The data contract: column names shared by data, features, ctr, bert, recall and metrics.

One name per concept (the recommenders library keeps such constants too).
In chapter 03's CTR dataset (:func:`ecrec.features.build_ctr_dataset`) an
example is one row: a user, a candidate item, a moment and a 0/1 label.

* ``item_id`` is always the product's **stock code** (str); a model's integer
  row for it is ``item_idx``, never an ``item_id``.
* ``ts`` is the invoice's time (datetime64, UK local time, minute resolution).
"""

from __future__ import annotations

USER_ID = "user_id"  # int64 customer id
ITEM_ID = "item_id"  # str stock code
ITEM_IDX = "item_idx"  # int64 row of the item in a model's table (recall's matrices, embeddings)
TS = "ts"  # datetime64, the invoice's time
INVOICE_NO = "invoice_no"  # str invoice number
LABEL = "label"  # int8 0/1: bought (1) or a sampled negative (0)
SPLIT = "split"  # "train" | "valid" | "test"
HIST_ITEMS = "hist_items"  # list[str]: item ids bought before ts, newest first
COLD_ITEM = "cold_item"  # bool: nobody bought the item before the model's data ends (features.cold_items)
DESCRIPTION = "description"  # str: the product's cleaned description
