"""The API's routes, one module per resource: searches, checkpoints, measurements, genomes,
stats, health and the dashboard page. Thin: each validates, calls service.repository or the
housekeeping, and answers with a schema; none imports torch, pymoo or Ray."""
