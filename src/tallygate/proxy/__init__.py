"""The proxy endpoints: one request is read and parsed through its wire format
(formats/), admitted by the limits, recorded, forwarded with retries and fallbacks
(retries.py) and answered by the relay (relay.py), which meters it."""
