"""`snowtrap demo`: the whole pipeline on one machine, from an empty checkout to a report.

What it does, saying so at each step:

1. Kafka: the broker named by `KAFKA_BOOTSTRAP_SERVERS` (or `SNOWTRAP_BOOTSTRAP_SERVERS`, or
   `--bootstrap-servers`), else the project's own single-node broker (`devtools.kafka_broker`)
   in `.cache/kafka/demo`, stopped again at the end if the demo started it;
2. topics with a suffix unique to this run, so runs never see each other's messages, and the
   live sightings page (`snowtrap live`) on them, its address printed at once (`live_page`);
3. a model bundle: `--bundle DIR`, else the one a previous demo trained
   (`runs/demo/bundle/snowtrap-leopard-demo`), else it trains one (`configs/demo.yaml`, the
   small synthetic run: a few minutes on 2 cores);
4. a synthetic camera-trap survey with exact ground-truth boxes, plus one corrupt JPEG and one
   file that is not an image;
5. `snowtrap worker --bundle DIR` as a subprocess (as deployed: configured by `SNOWTRAP_*`),
   waiting for its `/readyz`; its log goes to `runs/demo/worker.log`;
6. the real uploader (`stream.uploader`) sends the survey to `trap.images`;
7. it reads `trap.detections` and `trap.deadletter` until every uploaded image has its
   outcome, and counts the crops on `trap.crops`;
8. a table of what was found and `runs/demo/report.html`: every image with the predicted boxes
   (red) and the ground truth (green), and the dead letters with their reasons.

The modules, in the order the demo uses them: `settings` (what it reads), `live_page` (the
live sightings page), `survey` (the synthetic card), `worker_process` (the worker subprocess),
`outcomes` (reading the output topics), `summary` and `report` (the table and the HTML page),
`steps` (the run itself) and `cli` (the command).
"""

from snowtrap.demo.cli import configure_cli
from snowtrap.demo.settings import DemoError, DemoSettings
from snowtrap.demo.steps import run_demo

__all__ = ["DemoError", "DemoSettings", "configure_cli", "run_demo"]
