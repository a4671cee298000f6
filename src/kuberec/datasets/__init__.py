"""Source datasets: locating, downloading, verifying and reading them."""
