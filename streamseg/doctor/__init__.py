"""`streamseg doctor`: one command that says whether the GPU path (or, with
`--device cpu`, the same checks on the CPU) works on this host and how fast it is."""
