"""The one stream runtime both Faust processes (`snowtrap worker`, `snowtrap matcher`) run on.

- `settings`  `StreamProcessSettings`: the Kafka connection plus everything a Faust process
              reads (group, batching, flow control, probes port, timeouts, logging)
- `app`       `create_app`: the Faust app those settings describe (no internal topics, raw
              bytes, read_committed, short sessions)
- `transport` Faust's aiokafka transport reading read_committed and never committing offsets
              itself
- `transactions` `PartitionTransactions`: a batch's outputs and input offsets in one Kafka
              transaction per input partition (exactly once)
- `batches`   `GuardedBatchHandler` and `add_batch_agent`: one micro-batch at a time,
              committed in its transactions or not at all
- `health`    `ProcessHealth` and `HealthServer`: `/metrics`, `/healthz`, `/readyz`
- `metrics`   `ProcessMetrics`: one Prometheus registry per process and its metric helpers
- `process`   exit codes, logging, the data directory, topic creation, running the Faust worker
- `cli`       `--config FILE` and loading settings with one error line on bad input
"""
