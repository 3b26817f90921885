"""The sync engine behind SyncAudienceOperator: plain Python over DB-API connections, no Airflow import.

- :mod:`.state`: the state table (what the last run synced); :mod:`.state_names` checks its tables' names,
  :mod:`.stored_rows` is a stored row, :mod:`.stage_table` the temporary stage table of this run.
- :mod:`.plan`: diff planning (new / updated / unchanged / gone), sync modes, duplicates, the removal guard.
- :mod:`.removal_budget`: the removal guard of a partitioned sync: the whole run's budget, empty and broken shares.
- :mod:`.batches`: upload sessions of at most 10,000 rows, each page recorded before it is sent.
- :mod:`.journal`: the write-ahead page journal and every state write of a sending run; reconciliation.
- :mod:`.removals`: this run's removal rows (planned and owed), shared identifiers withheld.
- :mod:`.sending`: sending a plan: journaled sessions, refused removals, resuming a full refresh.
- :mod:`.lease`: one run of a sync at a time, through a lease row in the state database.
- :mod:`.engine`: one sync run from prepared rows to a report.
- :mod:`.report`: the run's report and its log table.
"""
