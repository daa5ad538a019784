"""Benchmarks of the train step, sampling, the data loader, and imagen-pytorch side by side; the
`cascade bench` commands are in `cascade.cli.bench`."""
