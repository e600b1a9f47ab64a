"""Deploy a trained run: export (safetensors / ONNX / int8), a model registry, and an HTTP server.

Submodules are imported on use (``textloop.serving.export``, ``.registry``, ``.app``) so that
loading a run never pulls in FastAPI or onnxruntime.
"""
