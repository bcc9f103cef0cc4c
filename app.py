"""fracture dashboard entry point: ``streamlit run app.py``.

Six pages (Predict, Dataset, Train, Model, Inbox, Learn) share one sidebar: the active
model, the operating point used to label predictions, and the notice that
this is a research demo. The model itself is loaded once per server process
(see ``app_pages/_common.py``), on a background thread started by the first
visit to any page: pages that do not score render at once, and an upload made
while the model loads waits for it with a note.

The pages live in ``app_pages/``, not ``pages/``: Streamlit treats a folder
named ``pages`` beside the entry point as an old-style multipage app until
``st.navigation`` first runs in the process, so a server whose first visitor
opened a bookmarked ``/train`` would run that page without this script (no
sidebar, no shared settings) for every later visitor too.
"""

import streamlit as st

from app_pages import _common as common

st.set_page_config(page_title="fracture", page_icon="🦴", layout="wide")
common.keep_keras_state_between_reruns()
common.configure_server_logging()
common.start_loading_model()  # in the background: no page waits for it unless it scores
common.hide_chart_toolbars()

navigation = st.navigation(
    [
        st.Page("app_pages/predict.py", title="Predict", icon=":material/radiology:", default=True),
        st.Page("app_pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
        st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("app_pages/model.py", title="Model", icon=":material/description:"),
        st.Page("app_pages/inbox.py", title="Inbox", icon=":material/inbox:"),
        st.Page("app_pages/learn.py", title="Learn", icon=":material/school:"),
    ]
)
common.render_sidebar()
navigation.run()
