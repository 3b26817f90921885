"""The sync engine behind SyncAudienceOperator: plain Python over DB-API connections, no Airflow import.

- :mod:`.state`: the state table (what the last run synced) and the temporary stage table of this run.
- :mod:`.plan`: diff planning (new / updated / unchanged / gone), sync modes, duplicates, the removal guard.
- :mod:`.batches`: upload sessions of at most 10,000 rows; the state follows only acknowledged batches.
- :mod:`.lease`: one run of a sync at a time, through a lease row in the state database.
- :mod:`.engine`: one sync run from prepared rows to a report.
- :mod:`.report`: the run's report and its log table.
"""
