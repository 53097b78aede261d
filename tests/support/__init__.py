"""Test helpers: a real daemon process, a Unix agent client, a fake clock."""
