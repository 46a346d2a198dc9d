"""OpenAI's Batch API, billed once at batch prices.

`POST /v1/batches` passes through (routes/objects.py: the input file must be the caller's);
the gateway remembers the batch's creator (store.py, table tallygate_batches). When the batch
has finished, seen by a client's retrieve or by the poller (poller.py, one leading instance),
its output and error files are read and each line becomes one ledger record (lines.py,
settle.py): a request id derived from the batch id and `custom_id`, the creator's tenant and
key, the line's usage at the batch tier (metering/pricing.py: the data's batch variant, else
50% of the standard rates).
"""
