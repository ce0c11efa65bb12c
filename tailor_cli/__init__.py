"""The clients of the suite: the `tailor` CLI, the launcher (`tailor up`) and the demo loader. They speak only the
public gRPC API (tests/unit/cli/test_client_imports.py checks that no module here imports services.*); shared/ (the
runtime library services import) never imports them."""
