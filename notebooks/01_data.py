# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The data
#
# Placeholder: the chapter is being written.

# %% tags=["parameters"]
profile = "auto"  # "auto" | "smoke" | "full"
seed = 42
output_dir = "outputs/01_data"
sizes = None  # optional dict overriding the profile's sizes

# %%
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %%
import time

from ecrec.data import load_clean_online_retail
from ecrec.io import write_metrics
from ecrec.profiles import pick_sizes, seed_everything

STARTED = time.time()
SIZES = {"smoke": {"top_n": 10}, "full": {"top_n": 20}}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)

# %%
clean, report = load_clean_online_retail()
report.to_frame()

# %%
write_metrics(output_dir, {"rows_clean": len(clean)}, profile=run_profile, seed=seed, started=STARTED)
