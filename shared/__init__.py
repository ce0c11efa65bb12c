"""Runtime plumbing shared by every Tailor service: settings, logging, errors, gRPC, database."""
