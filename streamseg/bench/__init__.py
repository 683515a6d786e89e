"""`streamseg bench`: the benchmark matrix (`matrix`, `cell`, `reference`, `report`,
`plot`) and the focused modes (`tracker`, `server`, `browser`, `websocket`, `backend`)."""
