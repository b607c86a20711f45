"""A job's Redis ACL user outlives a Redis restart: AOF keeps keys, not users, so the operator grants it again."""

from __future__ import annotations

import redis

from tests.operator.conftest import Cluster, Operator, eventually, manifest


async def test_a_redis_that_forgot_the_jobs_user_is_given_it_again(cluster: Cluster, operator: Operator) -> None:
    await cluster.create_job(manifest("acl"))
    admin = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    await eventually(lambda: "tj-ml-acl" in admin.acl_users(), what="the job's user granted")
    [secret] = [s for s in cluster.api.live("secrets", "ml") if s["metadata"]["name"] == "acl-redis"]
    password = secret["stringData"]["password"]

    admin.acl_deluser("tj-ml-acl")  # what a Redis restarted without an ACL file has forgotten

    await eventually(lambda: "tj-ml-acl" in admin.acl_users(), timeout=10, what="the job's user granted again")
    # With the password its pods already hold (the Secret is unchanged).
    pods_view = redis.Redis.from_url(cluster.redis_url, username="tj-ml-acl", password=password)
    assert pods_view.ping()
    await cluster.delete_job("acl")
    await eventually(lambda: "tj-ml-acl" not in admin.acl_users(), what="the user revoked with its job")
