"""Inbox: the studies the DICOM node received and scored, most suspicious (or newest) first.

Rows refresh by themselves while the page is open. Patient identifiers are
masked unless the admin gate is open, and stay masked when no admin password is
configured; the short reference (a hash of the study) is what staff can quote
without revealing who the patient is. Studies the node could not score are
listed apart, with the reason and a button that hands them back to the node.
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
    if common.admin_password() is None:
        # No password: anyone could open the gate, so identifiers are never shown.
        st.caption(
            "Masked. To see patient names and IDs here, set an admin password "
            "(the FRACTURE_ADMIN_PASSWORD environment variable, or admin_password in "
            ".streamlit/secrets.toml), restart the dashboard and unlock with it."
        )
    else:
        reveal = common.admin_gate("Showing patient names and IDs")
        st.caption("Shown." if reveal else "Masked until the admin password is given.")
order = st.radio("Order", inbox.SORTS, horizontal=True, label_visibility="collapsed")


def show_failed() -> None:
    """Studies the node gave up on, with the reason and a retry button each."""
    failed = inbox.failed_studies(spool, reveal=reveal)
    if not failed:
        return
    st.error(
        f"{len(failed)} study(ies) could not be scored after the node's tries; their images "
        "are kept. Fix the cause, then retry.",
        icon=":material/error:",
    )
    for study in failed:
        text, button = st.columns([5, 1], vertical_alignment="center")
        text.markdown(
            f"**{study.reference}** · {study.patient_name or 'no name'} · "
            f"{study.instances} image(s), {study.attempts} tries: {study.reason}"
        )
        if button.button("Retry", key=f"retry_{study.key}", icon=":material/refresh:"):
            moved = inbox.retry(spool, study)
            st.toast(f"Study {study.reference}: {moved} image(s) handed back to the node.")


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
    show_failed()
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
                help="The study's most suspicious image among those the model could judge; "
                "empty when it could judge none",
            ),
            "Not assessed": st.column_config.TextColumn(
                help="Images that do not look like the radiographs the model learned from: "
                "it gives them no result, and they do not count towards the study's"
            ),
        },
    )
    st.session_state["inbox_studies"] = studies


show_inbox()
studies = st.session_state.get("inbox_studies") or []
if studies:
    labels = {
        f"{s.reference} · {s.patient_name or 'no name'} · "
        + (f"{s.probability:.2f} · " if s.probability is not None else "")
        + s.verdict: s
        for s in studies
    }
    choice = st.selectbox(
        "Open a study", list(labels), index=None, placeholder="Choose a study to see its images"
    )
    if choice is not None:
        study = labels[choice]
        st.subheader(
            f"Study {study.reference}: {study.verdict}"
            + (f", probability {study.probability:.2f}" if study.probability is not None else "")
        )
        if study.caution:
            st.warning(study.caution.capitalize(), icon=":material/warning:")
        if study.not_assessed_images:
            st.info(
                f"{study.not_assessed_images} image(s) were not assessed: they do not look like "
                "the radiographs the model learned from, so they have no result and do not "
                "count towards the study's."
            )
        if study.failed_images:
            st.warning(f"{study.failed_images} image(s) of this study could not be scored.")
        columns = st.columns(min(3, len(study.captures)))
        for index, (name, probability, verdict) in enumerate(study.captures):
            with columns[index % len(columns)]:
                shown = f"probability {probability:.2f}" if probability is not None else verdict
                try:
                    st.image(
                        inbox.capture_pixels(study, name),
                        caption=f"Image {index + 1}: {shown}",
                    )
                except (OSError, ValueError):
                    st.warning(f"Image {index + 1}: its result picture could not be read.")
        st.caption(
            f"Model {study.model}. Heat map: where the model looked; yellow box: the "
            "region of strongest evidence."
        )
