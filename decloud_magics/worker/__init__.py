"""The worker side: claim tasks, run them in a sandbox process, publish results.

Kept free of imports so the sandbox runtime, which lives in this package,
starts without loading anything it does not need.
"""
