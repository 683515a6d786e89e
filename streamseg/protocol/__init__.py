"""Wire formats: pure, sans-I/O code shared by every surface and the client."""
