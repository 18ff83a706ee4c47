"""The library's side of serving: the proto stubs, the bearer-token convention and the client.
The server itself is pegasus_gsg.server (source folder server/ of the checkout)."""
