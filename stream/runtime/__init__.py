"""The one stream runtime both Faust processes (`snowtrap worker`, `snowtrap matcher`) run on.

- `settings`  `StreamProcessSettings`: the Kafka connection plus everything a Faust process
              reads (group, batching, flow control, probes port, timeouts, logging)
- `app`       `create_app`: the Faust app those settings describe (no internal topics, raw
              bytes, offsets committable only after the broker acknowledged a batch's outputs)
- `batches`   `GuardedBatchHandler` and `add_batch_agent`: one micro-batch at a time, acks held
              back unless the batch completed
- `health`    `ProcessHealth` and `HealthServer`: `/metrics`, `/healthz`, `/readyz`
- `metrics`   `ProcessMetrics`: one Prometheus registry per process and its metric helpers
- `process`   exit codes, logging, the data directory, topic creation, running the Faust worker
- `cli`       `--config FILE` and loading settings with one error line on bad input
"""
