"""The clients of the suite: the `tailor` CLI, the launcher (`tailor up`) and the demo loader. They use the public API
and the services' admin entry points; shared/ (the runtime library services import) never imports them."""
