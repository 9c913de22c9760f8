"""`snowtrap matcher`: HotSpotter-style individual identification on `trap.crops`.

The matching core and the individual database live in `models.reid` (no Kafka); this package
is the stream processor around them: settings, the per-crop service, metrics, the command;
the Faust app, batch agent and health server are the shared `stream.runtime`.
"""
