"""What runs on the workers around the tasks: the per-process caches, the worker plugin that
preloads a job's model on every worker (new and restarted ones included) and clears the caches
on teardown, and the per-node lock around model downloads.

Importing this package is cheap: no torch, no distributed.
"""
