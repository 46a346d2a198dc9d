"""Rate limits and budgets, enforced before the upstream is called.

Every limit is a counter checked and incremented atomically, all of a request's
counters together (one Redis script call, or one step of the event loop in
process):

- rpm: requests in the current minute, `count + 1 <= limit`;
- tpm: tokens in the current minute, reserved as prompt estimate + max_tokens,
  then corrected to the real total when the request is metered;
- budget: USD (in nano-dollars) spent plus reserved in the period (day, month
  or total). A request is admitted while `spent + reserved < budget`, and
  reserves its worst-case cost; the reservation is replaced by the real cost
  once metered. Concurrent requests therefore overshoot a budget by at most one
  request's worst case: only a request admitted while budget remained can cross
  it, and every request admitted after it sees the crossing.

  The worst case (metering/bounds.py) is the body size in tokens (one a byte)
  plus the output cap (the request's max_tokens, else the model's context
  window, else TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS) times the choices (`n`,
  `best_of`), at the dearest price of the models that may serve it. The record
  is billed at most at those bounds, so the reservation is a true bound (images
  and files aside: see docs/reliability.md). A route with no known price is
  reserved at TALLYGATE_UNPRICED_RESERVE_MTOK, or refused to budgeted callers.

With REDIS_URL the counters are shared by every instance; without it they are
per process. Budget counters start from the ledger's spend for the period, so
spend survives restarts.
"""
