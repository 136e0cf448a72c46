"""The web UI (Gradio): `python -m lightx2v.web.ui` or `lightx2v ui` (lightx2v/web/ui.py).

Nothing here imports gradio at import time: it is the `ui` extra's, loaded when the UI starts.
"""
