import time, sys
import os
from test_outages import PrivateRedis, private_redis, limited_tenant, burst, chat, TOKEN

def test_measure(gateway, postgres_env, private_redis):
    gw = gateway(**postgres_env, REDIS_URL=private_redis.url, **dict(a.split("=",1) for a in os.environ.get("SCRATCH_ENV","").split() if a))
    tenant = limited_tenant(gw, rpm_limit=1_000_000)
    assert burst(gw, tenant) == [200] * 100
    private_redis.stop()
    print("down:", [chat(gw, TOKEN, tenant)[0] for _ in range(3)])
    private_redis.start()
    for delay in [float(x) for x in os.environ.get("SCRATCH_DELAYS", "0 1 10").split()]:
        time.sleep(delay)
        t = time.monotonic()
        st = burst(gw, tenant)
        print(f"after +{delay}s: {st.count(200)} ok, {st.count(503)} 503, in {time.monotonic()-t:.2f}s", flush=True)
        private_redis.stop(); private_redis.start()
