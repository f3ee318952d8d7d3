"""Truth-probe dashboard: `streamlit run app.py`.

The entry point draws the sidebar every page shares (model, statements, token
position) and runs the page chosen in the navigation. The model is loaded once
per process and shared by all pages and browser sessions.
"""

import os
import sys
from pathlib import Path

# Jobs run torch in background threads next to the script thread; OpenMP workers that
# spin while waiting would steal the CPU from each other (and from other processes).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Truth probes", page_icon="🔎", layout="wide")

from pages._shared import collect_finished_job, sidebar  # noqa: E402

PAGES = [
    st.Page(str(ROOT / "pages/overview.py"), title="Overview", icon=":material/dashboard:", default=True,
            url_path="home"),
    st.Page(str(ROOT / "pages/train.py"), title="Train a probe", icon=":material/model_training:",
            url_path="train-a-probe"),
    st.Page(str(ROOT / "pages/grid.py"), title="Accuracy grid", icon=":material/grid_on:",
            url_path="accuracy-grid"),
    st.Page(str(ROOT / "pages/directions.py"), title="Truth directions", icon=":material/explore:",
            url_path="truth-directions"),
    st.Page(str(ROOT / "pages/statement.py"), title="Probe a statement", icon=":material/edit_note:",
            url_path="probe-a-statement"),
    st.Page(str(ROOT / "pages/activations.py"), title="Activations", icon=":material/scatter_plot:",
            url_path="activation-pca"),
]

# url paths differ from the file names on purpose: a pages/ folder alone would make
# Streamlit run pages/<name>.py without this entry point when /<name> is opened first.
page = st.navigation(PAGES)
collect_finished_job()
sidebar()
page.run()
