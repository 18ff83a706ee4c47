"""gRPC serving for PEGASUS summarizers (`pegasus-gsg serve --model DIR`).

The source folder server/ installs as `pegasus_gsg.server`. batcher.py groups concurrent
requests for one worker thread, backends.py loads a model and generates (transformers or
CTranslate2; no grpc), summarizer.py validates inputs and options and decodes, service.py is the
grpc servicer, app.py owns the process (health, reflection, drain), auth.py and metrics.py are
optional layers, settings.py holds the serving settings, and __main__.py wires them into
`main(argv)`. Importing this package, app.py or batcher.py is cheap: torch and transformers are
imported by backends.py and summarizer.py only.
"""
