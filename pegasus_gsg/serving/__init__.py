"""The library's side of serving: the proto stubs, the bearer-token convention, the client and
`process.ServerProcess` (a server subprocess, started until SERVING and stopped with SIGTERM).
The server itself is pegasus_gsg.server (source folder server/ of the checkout)."""
