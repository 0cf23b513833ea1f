"""geartrain: a Gearman job server and the engine under the gear and gearman client faces."""

__version__ = "0.1.0"
