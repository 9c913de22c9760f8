"""Development tools: what a developer or a test needs around snowtrap, never a worker.

- `kafka_broker`  a real single-node Kafka 4 broker the project starts itself (tests, demo)
- `kafka_jars`    where that broker's jars come from (Maven once, cached) and its settings
- `local_processes`  ports, process liveness and log tails for child processes like it
- `kafka_cli`     `snowtrap kafka start|stop|status`

Nothing in `snowtrap.stream`, `snowtrap.training` or `snowtrap.models` imports this package
(the import-linter layers in pyproject.toml hold it at the command level).
"""
