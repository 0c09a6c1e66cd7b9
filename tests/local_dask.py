"""Dask settings for references computed in the test process.

The session's ``client`` fixture is the default client once any test has asked for it, and Dask
then picks the P2P shuffle, which needs that client's workers. A reference computed on local
threads asks for the task shuffle as well."""

THREADS = {"scheduler": "threads", "dataframe.shuffle.method": "tasks"}
