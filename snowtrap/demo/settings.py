"""What `snowtrap demo` reads, and the error its steps raise."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from snowtrap.core.settings import SnowtrapSettings

LEOPARD_SPECIES = "snow_leopard"
DEMO_CAMERA = "demo-cam"
DEMO_STATION = "demo-station"


class DemoError(RuntimeError):
    """A step of the demo could not be done; the message says which and why."""


class DemoSettings(SnowtrapSettings):
    """What `snowtrap demo` reads (command-line flags override these)."""

    model_config = SettingsConfigDict(
        env_prefix="SNOWTRAP_DEMO_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SNOWTRAP_BOOTSTRAP_SERVERS"),
    )
    """An existing Kafka cluster; None: the demo starts the project's local broker."""
    broker_dir: Path = Path(".cache/kafka/demo")
    run_dir: Path = Path("runs/demo")
    train_config: Path = Path("configs/demo.yaml")
    images: int = Field(default=60, ge=1)
    seed: int = 7
    width: int = 480
    height: int = 360
    camera_id: str = DEMO_CAMERA
    station_id: str = DEMO_STATION
    worker_ready_timeout_s: float = Field(default=180.0, gt=0)
    collect_timeout_s: float = Field(default=300.0, gt=0)
    live_port: int = Field(default=0, ge=0, le=65535)
    """Port of the live sightings page (`snowtrap live`); 0: any free port (printed)."""
    live_ready_timeout_s: float = Field(default=60.0, gt=0)
    hold: bool = False
    """Keep the live page, the broker and the topics up after the summary, until Ctrl-C."""
