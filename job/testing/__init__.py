"""Throwaway servers for the tests and the benches (PostgreSQL, PgBouncer, Prometheus and
its Pushgateway, headless Chromium), never imported by the product's runtime, like
`optuna.testing`: tests/ and bench/ share them from here."""
