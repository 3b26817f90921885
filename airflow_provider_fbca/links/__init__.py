"""Operator extra links: buttons on a task instance that open what it worked on at Meta."""
