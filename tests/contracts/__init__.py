"""Contract suites: one suite per seam, run against every implementation of it."""
