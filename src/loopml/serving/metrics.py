"""The server's Prometheus metrics."""

from __future__ import annotations


class ServerMetrics:
    """Prometheus metrics of one server, in a registry of its own (no global state)."""

    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter("loopml_requests", "HTTP requests by route, status and the version that "
                                "answered (empty when none did); 'unrouted': answered before any route ran",
                                ["model", "route", "status", "version"], registry=self.registry)
        self.latency = Histogram("loopml_request_latency_seconds", "Answered prediction requests, from the "
                                 "first byte in to the last byte out (read, parse, check, score, write)",
                                 ["model", "version"], registry=self.registry,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.model_latency = Histogram("loopml_model_latency_seconds", "The model's share of a prediction "
                                       "request (waiting for its batch and scoring)", ["model", "version"],
                                       registry=self.registry,
                                       buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.rows = Counter("loopml_prediction_rows", "Rows scored", ["model", "version"], registry=self.registry)
        self.values = Histogram("loopml_prediction_value", "Predicted score or value (binary, regression)",
                                ["model", "version"], registry=self.registry,
                                buckets=(.1, .2, .3, .4, .5, .6, .7, .8, .9, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000))
        self.classes = Counter("loopml_predicted_class", "Predicted class (multiclass)",
                               ["model", "version", "cls"], registry=self.registry)
        self.unknown = Counter("loopml_unknown_category", "Categorical values not seen in training",
                               ["model", "feature"], registry=self.registry)
        self.batch = Histogram("loopml_batch_rows", "Rows per micro-batch", ["model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.traffic = Gauge("loopml_traffic_weight", "Share of traffic per served version",
                             ["model", "version"], registry=self.registry)
        self.errors = Counter("loopml_prediction_errors", "Rows the model failed to answer (valid input)",
                              ["model", "version"], registry=self.registry)
        self.shadow_latency = Histogram("loopml_shadow_latency_seconds", "Time the shadow version took on a "
                                        "mirrored request", ["model", "version"], registry=self.registry,
                                        buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.log_dropped = Gauge("loopml_prediction_log_dropped", "Log records dropped (queue full)",
                                 ["model"], registry=self.registry)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
