"""ecrec: the tested code behind the book on pretrained language models for
e-commerce CTR prediction and recall. One module per concept; see CONTRIBUTING.md."""

import warnings

__version__ = "0.1.0"

# Without ipywidgets, tqdm.auto falls back to plain-text bars in a notebook and
# warns about it; the text bars are what the static book shows anyway.
warnings.filterwarnings("ignore", message="IProgress not found")
