"""Sampling: the generic loop every reverse process runs under (``loop.py``) and the requests it
starts from (``requests.py``). Token drawing (temperature, top-k, top-p) is ``thunderdlm.categorical``,
below both the processes and this loop."""
