"""The connections table: items and their codec, schema versions, tags and metadata, quota records,
the listing."""
