"""gRPC serving for PEGASUS summarizers (`python -m server --model DIR`).

model.py loads a model and runs the batching worker (no grpc), service.py is the grpc servicer,
auth.py and metrics.py are optional layers, __main__.py wires them into `serve()`. Importing this
package is cheap: torch and transformers are imported by model.py only.
"""
