"""The dashboard's pages, run by ``st.navigation`` in ``app.py`` (see there for the folder name)."""
