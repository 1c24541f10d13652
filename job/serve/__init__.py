"""What the roles serve while they run: a worker's metrics (`metrics`), the study's
figures for Prometheus (`exporter`), optuna-dashboard (`dashboard`). The exporter and the
dashboard import no torch."""
