"""Matching plugins: answer sub-requests of the proxy pipeline faster than the default matcher."""
