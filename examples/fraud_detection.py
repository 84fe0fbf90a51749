"""The seed's fraud-detection pipeline, on data it generates itself.

source (card transactions) -> fraud filter -> enrichment with account data
-> keyed aggregation per account -> sink

Run it on a local cluster of 2 worker processes:

    sabot run examples/fraud_detection.py --workers 2

or in this process:

    python examples/fraud_detection.py
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot import Stream
from sabot.runtime.generators import transactions

NUM_ACCOUNTS = 10_000
NUM_TRANSACTIONS = 20_000_000
SUSPICIOUS_AMOUNT = 1_000.0
RISKY_MERCHANTS = ["steam"]  # gift-card heavy: a classic cash-out route


def accounts_table(num_accounts=NUM_ACCOUNTS):
    """Static account data to enrich transactions with (deterministic)."""
    ids = np.arange(num_accounts, dtype=np.int64)
    tiers = pa.array(["standard", "gold", "platinum"]).take(pa.array(ids % 3))
    countries = pa.array(["DE", "FR", "US", "JP", "BR"]).take(pa.array((ids * 7) % 5))
    return pa.table({"account_id": ids, "tier": tiers, "country": countries})


# An expression (not a Python function) so it ships to worker processes as data.
fraud_rule = (pc.field("amount") > SUSPICIOUS_AMOUNT) | (
    pc.field("merchant").isin(RISKY_MERCHANTS) & (pc.field("amount") > SUSPICIOUS_AMOUNT / 4)
)

stream = (
    Stream.from_generator(transactions, total_rows=NUM_TRANSACTIONS, batch_size=65_536,
                          parameters={"num_accounts": NUM_ACCOUNTS}, name="transactions")
    .parallelism(2)
    .filter(fraud_rule, name="fraud_filter")
    .join_table(accounts_table(), on="account_id", name="enrichment")
    .key_by("account_id")
    .aggregate({"amount": ["count", "sum", "max"]}, name="per_account")
    .collect(name="suspicious_accounts")
)


if __name__ == "__main__":
    result = stream.run(default_parallelism=2)
    table = result.table().sort_by([("amount_sum", "descending")])
    print(f"{table.num_rows} accounts with suspicious activity; top 10 by amount:")
    for row in table.slice(0, 10).to_pylist():
        print(row)
