"""Jobs and the services that run them: the typed job (`jobs`), `selva-rt batch` in process
(`batch`) or on Ray (`batch_ray`), and the HTTP server (`server`) with its crash-safe journal."""
