"""Truth-probe dashboard: `streamlit run app.py`.

The entry point draws the sidebar every page shares (the navigation, model,
statements, token position) and runs the page chosen in it. Nothing before the
page's title imports torch or loads a model: the pages that need the model load it
after their title (once per process, shared by all pages and browser sessions).
"""

import os
from pathlib import Path

# Jobs run torch in background threads next to the script thread; OpenMP workers that
# spin while waiting would steal the CPU from each other (and from other processes).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

ROOT = Path(__file__).resolve().parent  # `streamlit run` puts it on sys.path: pages._shared imports

st.set_page_config(page_title="Truth probes", page_icon="🔎", layout="wide")

PAGES = [
    st.Page(str(ROOT / "pages/overview.py"), title="Overview", icon=":material/dashboard:", default=True,
            url_path="home"),
    st.Page(str(ROOT / "pages/train.py"), title="Train a probe", icon=":material/model_training:",
            url_path="train-a-probe"),
    st.Page(str(ROOT / "pages/grid.py"), title="Accuracy grid", icon=":material/grid_on:",
            url_path="accuracy-grid"),
    st.Page(str(ROOT / "pages/directions.py"), title="Truth directions", icon=":material/explore:",
            url_path="truth-directions"),
    st.Page(str(ROOT / "pages/generalization.py"), title="Generalization", icon=":material/swap_horiz:",
            url_path="generalization-matrix"),
    st.Page(str(ROOT / "pages/compare.py"), title="Compare studies", icon=":material/balance:",
            url_path="compare-studies"),
    st.Page(str(ROOT / "pages/steer.py"), title="Steer", icon=":material/tune:", url_path="steer-the-model"),
    st.Page(str(ROOT / "pages/statement.py"), title="Probe a statement", icon=":material/edit_note:",
            url_path="probe-a-statement"),
    st.Page(str(ROOT / "pages/passage.py"), title="Score a passage", icon=":material/article:",
            url_path="score-a-passage"),
    st.Page(str(ROOT / "pages/trace.py"), title="Trace a statement", icon=":material/timeline:",
            url_path="trace-a-statement"),
    st.Page(str(ROOT / "pages/activations.py"), title="Activations", icon=":material/scatter_plot:",
            url_path="activation-pca"),
]

# url paths differ from the file names on purpose: a pages/ folder alone would make
# Streamlit run pages/<name>.py without this entry point when /<name> is opened first.
# Until st.navigation first runs in a process, Streamlit also shows a menu of pages/'s file
# names (_shared.py included); .streamlit/config.toml hides it (client.showSidebarNavigation),
# which hides st.navigation's menu too, so the menu is drawn here as links: it is the first
# thing the sidebar shows, before the shared sidebar's imports (pandas: a fraction of a second).
page = st.navigation(PAGES, position="hidden")
with st.sidebar:
    for entry in PAGES:
        st.page_link(entry)
    st.divider()

from pages._shared import collect_finished_job, sidebar  # noqa: E402

collect_finished_job()
sidebar()
page.run()
