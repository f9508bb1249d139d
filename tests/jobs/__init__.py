"""Job modules the worker tests run (imported by `roger worker --jobs tests.jobs.X`)."""
