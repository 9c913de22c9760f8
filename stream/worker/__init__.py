"""`snowtrap worker`: the Faust stream processor that turns trap images into detections.

- `settings`  the one typed settings object (env vars `SNOWTRAP_*`, optional YAML file)
- `pipeline`  the pure batch logic: parse, fetch, decode, classify, gate, detect, crop, and
              the messages that come out of it; no Kafka, no event loop
- `claim_check`  reading images that travel as `file://` claim checks, inside allowed roots
- `app`, `topics`, `agents`  the Faust app, its topics and the batching agent
- `health`    `/metrics`, `/healthz` and `/readyz` on the metrics port
- `cli`       the command: load the bundle, create topics, run the Faust worker
"""
