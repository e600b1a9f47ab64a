"""Deploy a trained run: export (safetensors / ONNX / int8) and an HTTP server.

The registry the server loads from is an artifact (``textloop.artifacts.registry``). Submodules
are imported on use (``textloop.serving.export``, ``.app``) so that loading a run never pulls in
FastAPI or onnxruntime.
"""
