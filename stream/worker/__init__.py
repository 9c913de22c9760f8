"""`snowtrap worker`: the Faust stream processor that turns trap images into detections.

- `settings`  the one typed settings object (env vars `SNOWTRAP_*`, optional YAML file)
- `pipeline`  the pure batch logic: parse, fetch, decode, classify, gate, detect, crop, and
              the messages that come out of it; no Kafka, no event loop
- `claim_check`  reading images that travel as `file://` claim checks, inside allowed roots
- `topics`, `agents`  its Faust topics and the batching agent
- `cli`       the command: load the bundle, create topics, run the Faust worker

The Faust app, the guarded batch agent, the health server and the settings every stream
process shares come from `stream.runtime`, which the matcher runs on too.
"""
