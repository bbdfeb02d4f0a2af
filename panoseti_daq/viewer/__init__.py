"""What a client does with frames once it has them: no network, no event loop.

`live_table` keeps the CLI's per-module table (rates, gaps, drops, latest values) and
`recorder` writes streamed frames back to PFF files as the observatory's tools read them. The
plots are `panoseti_daq.plots`.
"""
