"""What the dashboard pages show, computed without Streamlit: tables, figures, downloads, the admin gate."""
