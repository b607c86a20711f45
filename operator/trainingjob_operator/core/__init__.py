"""The pure core both shells call: the replica env contract and every recovery decision.

Nothing here imports kopf, redis, grpc or torch (``make test`` checks it with import-linter).
"""
