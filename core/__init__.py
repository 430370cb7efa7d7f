"""PruneLens core: models, data, attention, pruning, training, run store. No Streamlit here."""
