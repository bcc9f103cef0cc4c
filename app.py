"""fracture dashboard entry point: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="fracture", page_icon="🦴", layout="wide")
st.title("fracture")
st.caption("Research demo, not for diagnosis.")
st.write("Bone-fracture detection on radiographs with ResNet-50 and Grad-CAM.")
