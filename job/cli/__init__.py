"""The command line, `python -m job VERB`: the verbs as a table (`verbs`), parsing and
the map from errors to exit codes (`main`), and one thin module per verb group (`model`,
`search`, `study`) that checks its inputs and calls the stage that does the work."""
