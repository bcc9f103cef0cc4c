"""Inbox: the studies the DICOM node received and scored, most suspicious (or newest) first.

Rows refresh by themselves while the page is open. Patient identifiers are
masked unless the admin gate is open; the short reference (a hash of the
study) is what staff can quote without revealing who the patient is.
"""

from __future__ import annotations

import streamlit as st

from app_pages import _common as common
from fracture.views import inbox

REFRESH_S = 5

st.title("Inbox")
common.show_model_banner()
st.caption(
    "Studies sent to this fracture node by the PACS (`fracture dicom listen`). "
    "Research use only, not for diagnosis: each result is a prompt to look again, "
    "never a finding."
)
settings = common.settings()
spool = settings.dicom_spool

reveal = False
with st.expander("Patient identifiers", icon=":material/lock:"):
    reveal = common.admin_gate("Showing patient names and IDs")
    st.caption("Shown." if reveal else "Masked until the admin password is given.")
order = st.radio("Order", inbox.SORTS, horizontal=True, label_visibility="collapsed")


@st.fragment(run_every=REFRESH_S)
def show_inbox() -> None:
    health = inbox.node_health(spool)
    if health is None:
        st.info(
            "No DICOM node has run with this folder yet. Start one with "
            "`python -m fracture dicom listen`; see the README section "
            '"Connect to a PACS".'
        )
    else:
        waiting = health.get("pending_studies", 0)
        state = "running" if health.get("status") == "running" else "stopped"
        undelivered = sum((health.get("undelivered_rounds") or {}).values())
        st.caption(
            f"Node {health.get('ae_title', '')} is {state} (last report "
            f"{health.get('updated_at', 'unknown')}); {waiting} study(ies) waiting to be "
            f"scored; {undelivered} result set(s) not yet delivered."
            + (f" Last problem: {health['last_error']}" if health.get("last_error") else "")
        )
    studies = inbox.inbox_studies(spool, reveal=reveal, sort=order)
    if not studies:
        st.write("No scored studies yet.")
        return
    st.dataframe(
        [study.row() for study in studies],
        hide_index=True,
        width="stretch",
        column_config={
            "Probability": st.column_config.ProgressColumn(
                "Probability",
                min_value=0.0,
                max_value=1.0,
                format="%.2f",
                help="The study's most suspicious image",
            ),
            "Unusual images": st.column_config.TextColumn(
                help="Some images do not look like the radiographs the model learned from; "
                "its result for them is unreliable"
            ),
        },
    )
    st.session_state["inbox_studies"] = studies


show_inbox()
studies = st.session_state.get("inbox_studies") or []
if studies:
    labels = {
        f"{s.reference} · {s.patient_name or 'no name'} · {s.probability:.2f} · {s.verdict}": s
        for s in studies
    }
    choice = st.selectbox(
        "Open a study", list(labels), index=None, placeholder="Choose a study to see its images"
    )
    if choice is not None:
        study = labels[choice]
        st.subheader(
            f"Study {study.reference}: {study.verdict}, probability {study.probability:.2f}"
        )
        if study.failed_images:
            st.warning(f"{study.failed_images} image(s) of this study could not be scored.")
        columns = st.columns(min(3, len(study.captures)))
        for index, (name, probability) in enumerate(study.captures):
            with columns[index % len(columns)]:
                try:
                    st.image(
                        inbox.capture_pixels(study, name),
                        caption=f"Image {index + 1}: probability {probability:.2f}",
                    )
                except (OSError, ValueError):
                    st.warning(f"Image {index + 1}: its result picture could not be read.")
        st.caption(
            f"Model {study.model}. Heat map: where the model looked; yellow box: the "
            "region of strongest evidence."
        )
