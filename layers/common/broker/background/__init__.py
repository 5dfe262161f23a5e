"""Work no person waits on: the scheduled run, the refresh worker, webhook delivery."""
