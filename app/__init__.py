"""MaskFormer Studio app: the workspace store, segment editing, callbacks and the Gradio UI.

Only ``app.ui`` imports gradio; everything else here is plain Python over numpy, so tests drive it
without a server.
"""
